"""Real-time inference: one S5Model step per frame, O(1) per frame, equal to the full model.

    python examples/streaming.py [--frames 600]

Builds a model with `recommended_defaults()`, runs it frame by frame as a 60 fps loop
would, and checks that the streamed outputs equal the full forward on every prefix.
"""

import argparse
import time

import torch

from s5ssm import S5Model, recommended_defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600)
    parser.add_argument("--features", type=int, default=32)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = S5Model(embed_dim=args.features, output_dim=4, **recommended_defaults()).eval()
    frames = torch.randn(1, args.frames, args.features)

    with torch.inference_mode():  # the first frame compiles the step kernel (cached on disk after)
        model.step(frames[:, 0], model.init_cache(batch_size=1))
    cache = model.init_cache(batch_size=1)
    outputs, start = [], time.perf_counter()
    with torch.inference_mode():
        for t in range(args.frames):
            y_t, cache = model.step(frames[:, t], cache)
            outputs.append(y_t)
        per_frame_ms = (time.perf_counter() - start) / args.frames * 1e3
        streamed = torch.stack(outputs, dim=1)
        full = torch.stack([model(frames[:, : t + 1]) for t in (0, args.frames // 2, args.frames - 1)], 1)
    error = (streamed[:, [0, args.frames // 2, args.frames - 1]] - full).abs().max().item()
    print(f"{args.frames} frames, {per_frame_ms:.3f} ms per frame (budget at 60 fps: 16.7 ms)")
    print(f"max |streamed - full forward on the prefix| = {error:.2e}")


if __name__ == "__main__":
    main()
