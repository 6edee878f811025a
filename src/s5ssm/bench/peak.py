"""Peak memory of one S5SSM forward+backward, each measurement in a fresh subprocess.

Torch has no peak-memory counter for CPU tensors, so each cell (mode, L, backend) runs in
its own Python process (`python -m s5ssm.bench.peak`) that builds the layer, the input u
and the output gradient, warms up on a 2-step sequence (numba kernels, autograd, MKL
buffers), and then measures one full forward+backward twice:

  rss     growth of the process's resident set: the high-water mark VmHWM is reset to the
          current RSS (`echo 5 > /proc/self/clear_refs`) right before, and VmHWM - VmRSS is
          read right after. The child runs with MALLOC_MMAP_THRESHOLD_=65536, so every
          tensor of 64 KiB or more is its own mapping and is returned to the OS when freed:
          RSS then follows the live memory instead of glibc's retained free lists (with the
          default dynamic threshold the same run measures anywhere from 1x to 3x the live
          peak, depending on allocation order).
  tensors the high-water mark of live tensor bytes, replayed from the allocation and free
          events of torch.profiler(profile_memory=True): exact and allocator-independent,
          but blind to memory allocated outside torch (numba's per-thread carries, MKL).

Everything allocated before the measurement (imports, parameters, u, the output gradient)
is excluded, as a baseline process doing the same imports and allocations would; the
gradients of u and of the parameters, created by the backward, are included.

On CUDA (`bench_memory_cuda`) torch's allocator keeps the count: each cell runs in this
process, its peak the growth of torch.cuda.max_memory_allocated over one forward+backward,
after the same warm-up and with the same exclusions.
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys

import torch

from .child import ChildFailed, run_child

MODES = ("scalar", "irregular")
_CACHE: dict[tuple, dict] = {}


# ---------------------------------------------------------------------------- parent side
def _mem_available_mib() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def measure(mode: str, length: int, backend: str, size: dict, timeout_s: float = 900) -> dict:
    """One cell in a fresh subprocess; memoised for this process (sections share cells)."""
    args = [mode, length, backend, size["batch"], size["hidden"], size["layer_state"]]
    key = tuple(args)
    if key in _CACHE:
        return _CACHE[key]
    try:
        result = run_child("s5ssm.bench.peak", args, dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"), timeout_s)
    except ChildFailed as failure:
        result = {"error": str(failure)}
    _CACHE[key] = result
    return result


def _growth(rows: list[dict], column: str, field: str) -> float | None:
    """Exponent k of peak ∝ L^k between the shortest and the longest length measured with a
    positive peak (a quick run's peaks can round to 0 MiB)."""
    points = [(r["L"], r[column][field]) for r in rows if r.get(column) and (r[column].get(field) or 0) > 0]
    if len(points) < 2:
        return None
    (l0, m0), (l1, m1) = points[0], points[-1]
    return math.log(m1 / m0) / math.log(l1 / l0)


def bench_memory(size: dict, lengths: list[int], ratio_length: int) -> dict:
    """Peak memory of layer forward+backward per L for the cpu and parallel backends."""
    rows = []
    for length in lengths:
        row: dict = {"L": length, "input_MiB": size["batch"] * length * size["hidden"] * 4 / 2**20}
        row["cpu"] = measure("scalar", length, "cpu", size)
        row["cpu_irregular"] = measure("irregular", length, "cpu", size)
        row["parallel"] = _bounded_parallel(rows, length, size)
        rows.append(row)
    columns = ("cpu", "parallel", "cpu_irregular")
    summary = _summary(rows, columns, "cpu", ratio_length, (("rss_MiB", "rss"), ("tensor_MiB", "tensors")))
    return {
        "device": "cpu",
        "columns": list(columns),
        "shape": {"B": size["batch"], "H": size["hidden"], "state_size": size["layer_state"]},
        "method": "fresh subprocess per cell; rss = VmHWM growth (reset just before) with "
        "MALLOC_MMAP_THRESHOLD_=65536; tensors = live-tensor high-water mark from torch.profiler "
        "allocation events; inputs, parameters and the output gradient excluded",
        "rows": rows,
        "summary": summary,
    }


def _summary(rows: list[dict], columns: tuple[str, ...], fast: str, ratio_length: int, fields) -> dict:
    """Growth exponents per column and field, and fast / parallel at ratio_length."""
    summary: dict = {}
    for column in columns:
        for field, name in fields:
            summary[f"{column}_growth_exponent_{name}"] = _growth(rows, column, field)
    at = next((r for r in rows if r["L"] == ratio_length), None)
    for field, name in fields:
        ok = at is not None and at[fast].get(field) and at["parallel"].get(field)
        summary[f"{fast}_over_parallel_{name}"] = at[fast][field] / at["parallel"][field] if ok else None
    summary["ratio_at_L"] = ratio_length
    return summary


def bench_memory_cuda(size: dict, lengths: list[int], ratio_length: int, device) -> dict:
    """Peak CUDA memory of layer forward+backward per L for the triton and parallel backends."""
    columns = ("triton", "parallel", "triton_irregular")
    rows = []
    for length in lengths:
        row: dict = {"L": length, "input_MiB": size["batch"] * length * size["hidden"] * 4 / 2**20}
        for column in columns:
            mode = "irregular" if column.endswith("irregular") else "scalar"
            try:
                row[column] = _cuda_cell(mode, length, column.split("_")[0], size, device)
            except torch.cuda.OutOfMemoryError as exc:
                row[column] = {"error": str(exc).splitlines()[0]}
            gc.collect()
            torch.cuda.empty_cache()
        rows.append(row)
    return {
        "device": str(device),
        "columns": list(columns),
        "shape": {"B": size["batch"], "H": size["hidden"], "state_size": size["layer_state"]},
        "method": "in process; tensors = growth of torch.cuda.max_memory_allocated over one forward+backward; "
        "parameters, u and the output gradient excluded",
        "rows": rows,
        "summary": _summary(rows, columns, "triton", ratio_length, (("tensor_MiB", "tensors"),)),
    }


def _cuda_cell(mode: str, length: int, backend: str, size: dict, device) -> dict:
    """One cell of bench_memory_cuda: {"tensor_MiB", "seconds"}."""
    import time

    from .sections import make_layer

    cell = dict(batch=size["batch"], length=length, hidden=size["hidden"], layer_state=size["layer_state"])
    layer, u = make_layer(cell, backend, device=device)
    u.requires_grad_()
    grad = torch.randn(u.shape, device=device)
    scale = (0.5 + torch.rand(u.shape[0], length)).to(device) if mode == "irregular" else 1.0
    small = torch.randn(u.shape[0], 2, u.shape[2], device=device, requires_grad=True)
    layer(small, step_scale=scale if mode == "scalar" else scale[:, :2]).backward(torch.ones_like(small))
    layer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    layer(u, step_scale=scale).backward(grad)
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {"tensor_MiB": (torch.cuda.max_memory_allocated(device) - before) / 2**20, "seconds": seconds}


def _bounded_parallel(rows: list[dict], length: int, size: dict) -> dict:
    """The parallel backend's cell, unless its extrapolated peak would not fit in memory."""
    previous = [r for r in rows if r["parallel"].get("rss_MiB")]
    available = _mem_available_mib()
    if previous and available is not None:
        last = previous[-1]
        predicted = last["parallel"]["rss_MiB"] * length / last["L"] * 1.3
        if predicted > 0.6 * available:
            return {"skipped": f"predicted peak {predicted:.0f} MiB > 60% of MemAvailable {available:.0f} MiB"}
    return measure("scalar", length, "parallel", size)


# ---------------------------------------------------------------------------- child side
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(field))


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # VmHWM := VmRSS
        return True
    except OSError:
        return False


def _child(mode: str, length: int, backend: str, batch: int, hidden: int, state: int) -> dict:
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from .sections import make_layer

    layer, u = make_layer(dict(batch=batch, length=length, hidden=hidden, layer_state=state), backend)
    u.requires_grad_()
    grad = torch.randn(u.shape)
    scale = 0.5 + torch.rand(batch, length) if mode == "irregular" else 1.0
    small = torch.randn(batch, 2, hidden, requires_grad=True)
    layer(small, step_scale=scale if mode == "scalar" else scale[:, :2]).backward(torch.ones_like(small))

    def run():
        layer.zero_grad(set_to_none=True)
        u.grad = None
        gc.collect()
        layer(u, step_scale=scale).backward(grad)

    run()  # first full-size run: page faults of glibc's heap, autograd graph caches
    layer.zero_grad(set_to_none=True)
    u.grad = None
    gc.collect()
    reset = _reset_peak()  # VmHWM := the current RSS, so the growth below is never negative
    before = _status_kib("VmRSS:")
    start = time.perf_counter()
    layer(u, step_scale=scale).backward(grad)
    seconds = time.perf_counter() - start
    rss = (_status_kib("VmHWM:") - before) / 1024

    layer.zero_grad(set_to_none=True)
    u.grad = None
    gc.collect()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        layer(u, step_scale=scale).backward(grad)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())  # fmt: skip
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return {
        "rss_MiB": rss if reset else None,
        "tensor_MiB": peak / 2**20,
        "seconds": seconds,
        **({} if reset else {"note": "/proc/self/clear_refs not writable: rss not measured"}),
    }


if __name__ == "__main__":
    mode_, length_, backend_ = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    batch_, hidden_, state_ = map(int, sys.argv[4:7])
    if mode_ not in MODES:
        raise SystemExit(f"mode must be one of {MODES}, got {mode_!r}")
    print(json.dumps(_child(mode_, length_, backend_, batch_, hidden_, state_)))
