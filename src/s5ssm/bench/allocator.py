"""The speed a plain script gets: the bare scan and the layer with and without keep_freed_memory().

`s5ssm bench` and the `s5ssm` command call s5ssm.memory.keep_freed_memory() for their
own process; a script that only does `import s5ssm` keeps glibc's default allocator, which
hands every large fresh tensor new pages to fault in. The setting is process-wide and
cannot be taken back, so each side runs in its own fresh subprocess
(`python -m s5ssm.bench.allocator plain|tuned ...`), the two alternating round by round so
that load from other processes falls on both; the figure is the ratio of their medians.

    scan    linear_scan forward, B̄u complex64 (B, L, P), out of place: a fresh output per call
    layer   S5SSM forward+backward at the layer section's sizes
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from .child import ChildFailed, run_child

MODES = ("plain", "tuned")


def measure(mode: str, size: dict, repeats: int) -> dict:
    """Median ms of the bare scan and the layer's forward+backward in this process, after
    keep_freed_memory() when mode is "tuned" (run in a fresh subprocess: see the module docstring)."""
    import torch

    from ..memory import keep_freed_memory
    from ..scan import linear_scan
    from .sections import layer_fwd_bwd, make_layer, scan_inputs
    from .timing import ms, timed

    if mode == "tuned":
        keep_freed_memory()
    lam, bu = scan_inputs(size["batch"], size["length"], size["state"])
    layer, u = make_layer(size)
    u_g = u.clone().requires_grad_()
    grad = torch.randn_like(u)

    def scan():
        with torch.no_grad():
            return linear_scan(lam, bu)

    stats = timed({"scan": scan, "layer": lambda: layer_fwd_bwd(layer, u_g, grad)}, repeats, warmup=2)
    return {name: ms(entry) for name, entry in stats.items()}


def _child(mode: str, size: dict, repeats: int) -> dict:
    """`measure` in a fresh interpreter; its JSON result."""
    # the plain side must not inherit an allocator set through the environment
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    try:
        return run_child("s5ssm.bench.allocator", [mode, json.dumps(size), repeats], env, timeout_s=600)
    except ChildFailed as failure:
        raise RuntimeError(f"bench allocator child ({mode}) failed: {failure}\n{failure.stderr[-2000:]}") from None


def bench_allocator(size: dict, repeats: int, rounds: int = 3) -> dict:
    """Plain import vs keep_freed_memory(): medians over `rounds` alternating subprocess
    pairs, each timing `repeats` calls. Returns ms per side and tuned-over-plain speedups."""
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode in MODES:
            runs[mode].append(_child(mode, size, repeats))
    result: dict = {"shape": {k: size[k] for k in ("batch", "length", "state", "hidden", "layer_state")},
                    "rounds": rounds, "repeats": repeats}  # fmt: skip
    for what in ("scan", "layer"):
        plain = statistics.median(r[what] for r in runs["plain"])
        tuned = statistics.median(r[what] for r in runs["tuned"])
        result[what] = {"plain_ms": plain, "tuned_ms": tuned, "speedup": plain / tuned}
    return result


if __name__ == "__main__":
    mode, size_json, repeats_arg = sys.argv[1:4]
    if mode not in MODES:
        sys.exit(f"mode must be one of {MODES}, got {mode!r}")
    print(json.dumps(measure(mode, json.loads(size_json), int(repeats_arg))))
