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
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    lead_in: bool = False,
    device: torch.device | str = "cpu",
) -> dict[str, dict]:
    """Run the functions interleaved, `warmup` rounds untimed then `repeats` timed rounds;
    with lead_in, each timed call right after an untimed call of the same function. On a
    CUDA device each timed call starts and ends with torch.cuda.synchronize, so the time is
    that of the kernels it launched.

    Returns {name: {"median": s, "min": s, "max": s, "runs": n}} in seconds; the median is
    the figure the bench reports, min/max show how noisy the run was.
    """
    sync = synchronizer(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()  # compilation, allocator warm-up, page faults of first touch
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if lead_in:
                fn()
            sync()
            start = time.perf_counter()
            fn()
            sync()
            samples[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": len(v)}
        for name, v in samples.items()
    }


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """What waits for the kernels queued on `device`: torch.cuda.synchronize on CUDA, else nothing."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


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
    """Cores, library versions, thread counts and the load average (the machine is shared);
    the GPU, CUDA and triton versions where CUDA is available."""
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
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
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
