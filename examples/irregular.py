"""Irregularly sampled, variable-length sequences: timestamps become step_scale, padding a mask.

    python examples/irregular.py

Three sequences observed at random times and of different lengths are padded into one
batch; the model gets the elapsed time between observations as a per-step step_scale and
the padding as a mask. Each sequence's output equals running it alone, unpadded.
"""

import torch

from s5ssm import S5Model


def main() -> None:
    torch.manual_seed(0)
    lengths = [50, 31, 7]
    times = [torch.sort(torch.rand(n) * 10).values for n in lengths]
    values = [torch.sin(t)[:, None] + 0.1 * torch.randn(len(t), 1) for t in times]

    batch, length = len(lengths), max(lengths)
    x = torch.zeros(batch, length, 1)
    step_scale = torch.ones(batch, length)  # padded steps: any positive value
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for i, (t, v) in enumerate(zip(times, values)):
        x[i, : len(t)] = v
        step_scale[i, : len(t)] = torch.diff(t, prepend=t[:1] - t.diff().median()) * 10
        mask[i, : len(t)] = True

    model = S5Model(embed_dim=1, hidden_size=16, state_size=16, num_layers=2, norm="layer", output_dim=2).eval()
    with torch.no_grad():
        batched = model(x, mask=mask, step_scale=step_scale)
        alone = torch.cat([model(x[i : i + 1, :n], step_scale=step_scale[i : i + 1, :n]) for i, n in enumerate(lengths)])
    print("batched output:\n", batched)
    print(f"max |batched - each sequence alone| = {(batched - alone).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
