"""Timing and machine description shared by the bench sections.

Every figure of `s5ssm bench` is a ratio of two medians measured in the same process,
the two functions run alternately round by round (`timed`), so that a burst of load from
another process on this shared machine falls on both sides of the ratio. Against JAX each
timed call follows an untimed call of the same function (`lead_in`): XLA's worker threads
keep spinning for tens of milliseconds after a JAX call returns, and the torch call right
after one ran about a third slower (the layer's forward+backward: 141 ms right after JAX's,
104 ms after a 50 ms pause).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def timed(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, lead_in: bool = False
) -> dict[str, dict]:
    """Run the functions interleaved, `warmup` rounds untimed then `repeats` timed rounds;
    with lead_in, each timed call right after an untimed call of the same function.

    Returns {name: {"median": s, "min": s, "max": s, "runs": n}} in seconds; the median is
    the figure the bench reports, min/max show how noisy the run was.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()  # compilation, allocator warm-up, page faults of first touch
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if lead_in:
                fn()
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
        for name, v in samples.items()
    }


def ms(stats: dict) -> float:
    """The median of a `timed` entry, in milliseconds."""
    return stats["median"] * 1e3


def try_jax():
    """(jax, jax.numpy) if jax is installed (the optional `bench` extra), else None."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    return jax, jnp


def machine_info() -> dict:
    """Cores, library versions, thread counts and the load average (the machine is shared)."""
    info: dict = {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import numba

        info["numba"] = numba.__version__
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        info["numba"] = None
    jx = try_jax()
    info["jax"] = jx[0].__version__ if jx is not None else None
    info["loadavg_at_start"] = load_average()
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
