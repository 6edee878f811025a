"""A 60 fps control loop on an exported S5 step, with onnxruntime and numpy alone (no torch).

Export the step of a trained model first:

    s5ssm export RUN_DIR --format onnx --what step --out step.onnx
    python examples/deploy_onnx.py step.onnx [--frames 600] [--no-sleep]

Each frame feeds the new observation and the states the previous frame returned
(state_out_i -> state_in_i); the states start at zero, as the file's metadata says.
Prints the time per frame spent in onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnxruntime as ort

FPS = 60


def zero_states(layout: dict, batch: int) -> dict[str, np.ndarray]:
    """The state inputs before the first frame: zeros of the shapes the metadata lists ([-1, ...]: batch first)."""
    shapes = layout["states"]["shapes"]
    return {name: np.zeros([batch] + shape[1:], dtype=np.float32) for name, shape in shapes.items()}


def observation(layout: dict, rng: np.random.Generator, vocab_size: int | None) -> np.ndarray:
    """A stand-in for the sensor reading of one frame, batch 1: (1, embed_dim) float32 or (1,) int64 tokens."""
    if vocab_size is not None:
        return rng.integers(0, vocab_size, size=(1,), dtype=np.int64)
    return rng.standard_normal((1, layout["x"]["shape"][-1])).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an exported step graph (s5ssm export --what step)")
    parser.add_argument("--frames", type=int, default=10 * FPS, help="frames to run (default: 10 s at 60 fps)")
    parser.add_argument("--no-sleep", action="store_true", help="run the frames back to back (no 60 fps pacing)")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # batch 1: one thread answers fastest
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("s5ssm.what") != "step":
        raise SystemExit(f"{args.model}: not an exported step graph (s5ssm.what={meta.get('s5ssm.what')!r})")
    layout = json.loads(meta["s5ssm.layout"])
    vocab_size = json.loads(meta["s5ssm.config"]).get("vocab_size")
    outputs = [o.name for o in session.get_outputs()]

    rng = np.random.default_rng(0)
    states = zero_states(layout, batch=1)
    spent = []
    next_frame = time.perf_counter()
    for _ in range(args.frames):
        x = observation(layout, rng, vocab_size)
        start = time.perf_counter()
        result = dict(zip(outputs, session.run(None, {"x": x, **states})))
        spent.append(time.perf_counter() - start)
        action = result.pop("y")  # the model's output for this frame, in the data's units
        states = {name.replace("_out", "_in"): value for name, value in result.items()}
        if not args.no_sleep:
            next_frame += 1.0 / FPS
            time.sleep(max(0.0, next_frame - time.perf_counter()))
    spent_ms = np.array(spent) * 1e3
    print(f"{args.frames} frames, output {list(action.shape)}: {np.median(spent_ms):.3f} ms per frame "
          f"(median; p90 {np.percentile(spent_ms, 90):.3f} ms), budget {1e3 / FPS:.1f} ms at {FPS} fps")


if __name__ == "__main__":
    main()
