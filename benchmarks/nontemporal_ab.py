"""Does the compiled scan's non-temporal store (s5ssm/scan/nontemporal.py) pay for itself?

The bare out-of-place `linear_scan` with its large output streamed (the default) against the
same call with streaming switched off (STREAM_BYTES above any output), alternating in one
process, each beside a memory copy of the input (the floor the scan is compared with in the
README). Prints per round the times and the ratios; several rounds, as the machine is shared.

    .venv/bin/python benchmarks/nontemporal_ab.py [--rounds 3] [--batch 8 --length 4096 --states 128]
"""

from __future__ import annotations

import argparse
import time

import torch

import s5ssm
from s5ssm.scan import linear_scan, nontemporal


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` calls of fn, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--states", type=int, default=128)
    args = parser.parse_args()
    s5ssm.keep_freed_memory()  # as the bench and the CLI run
    torch.manual_seed(0)
    lam = (torch.rand(args.states) * 0.5 + 0.4).to(torch.complex64)
    bu = torch.randn(args.batch, args.length, args.states, dtype=torch.complex64)
    streamed_from = nontemporal.STREAM_BYTES

    def scan_with(stream_bytes: int) -> float:
        nontemporal.STREAM_BYTES = stream_bytes
        try:
            return best_of(lambda: linear_scan(lam, bu, backend="cpu"), args.repeats)
        finally:
            nontemporal.STREAM_BYTES = streamed_from

    never = 1 << 62
    scan_with(streamed_from), scan_with(never)  # compile and warm both
    print(f"linear_scan B={args.batch} L={args.length} P={args.states}, output {bu.numel() * 8 / 2**20:.0f} MiB")
    for index in range(args.rounds):
        streamed, plain = scan_with(streamed_from), scan_with(never)
        copy = best_of(bu.clone, args.repeats)
        print(f"round {index}: streamed {streamed * 1e3:.2f} ms, plain stores {plain * 1e3:.2f} ms "
              f"(plain / streamed {plain / streamed:.2f}); copy / scan: streamed {copy / streamed:.2f}, "
              f"plain {copy / plain:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
