"""The bridge between torch and the compiled scan kernels, shared by every kernel module.

    tensors -> NumPy   `as_array` (read), `writable` (write into), `output_like`,
                       `flags`, `state_array`, `sink`, and the complex <-> float views
                       `floats`, `real_view`, `complex_tensor`
    threads            `thread_splits`, `task_span` (which states a prange task owns),
                       `touch_rows` (a block brought into cache before a backwards walk)
    ops                `KernelOp`: a kernel's entry point registered as a torch custom op,
                       so torch.compile'd code calls it instead of tracing into it;
                       `differentiable`: the autograd Function of a forward kernel and the
                       backward kernel that differentiates it

NumPy views rather than torch ops on purpose: each torch op before a kernel costs tens of
microseconds when the scan before it has flushed the caches (a B=8, L=4096, P=128
forward spent ~0.2 ms, a tenth of its time, in view_as_real and new_zeros).

numba caches a compiled kernel (cache=True) under its own source file and refreshes it
only when that file changes: the njit helpers below are compiled into the kernels that
call them (scan/cpu.py, scan/irregular.py), so after editing one of them clear the caches
(`find src -name '*.nb[ic]' -delete`) for the change to reach the kernels; the test suite
does that itself when a kernel source changed (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numba
import numpy as np
import torch

from .._checks import is_compiling

NUMPY_COMPLEX = {torch.complex64: np.complex64, torch.complex128: np.complex128}


def _start_numba_threads() -> None:
    """Start numba's thread pool now and keep torch's thread count as it was.

    Under numba's OpenMP threading layer, starting the pool sets OpenMP's thread count,
    which torch reads too: OMP_NUM_THREADS=1 or torch.set_num_threads(1) would silently
    become every core at the first compiled scan (and torch's reductions, whose rounding
    follows the thread count, would differ between a run and its resumed copy)."""
    torch_threads = torch.get_num_threads()
    numba.get_num_threads()  # starts the pool
    torch.set_num_threads(torch_threads)


_start_numba_threads()


# ---------------------------------------------------------------------------- tensors -> NumPy
def as_array(t: torch.Tensor) -> np.ndarray:
    """t as a C-contiguous NumPy array for a kernel to read: t's memory when t is
    contiguous, else a copy, as also when t carries torch's lazy conjugate or negative bit
    (which a view would ignore). Outputs go through `writable`."""
    return np.ascontiguousarray(t.numpy(force=True))


def writable(t: torch.Tensor) -> np.ndarray:
    """t's own memory as a NumPy array, for a kernel to write an output into. Raises if t is
    not contiguous or carries a lazy conjugate or negative bit: `as_array` would give the
    kernel a copy, and the output would be lost."""
    if not t.is_contiguous() or t.is_conj() or t.is_neg():
        raise ValueError("a scan kernel writes only into a contiguous tensor without a conjugate or negative bit")
    return t.numpy(force=True)  # force: detach only; no copy of such a tensor


def output_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of t's shape and dtype, for a kernel to write (`writable`)."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def flags(resets: torch.Tensor | None, batch: int, length: int) -> np.ndarray:
    """The resets as a bool array (B, L); all False if None."""
    if resets is None:
        return np.zeros((batch, length), dtype=np.bool_)
    return as_array(resets)


def state_array(initial_state: torch.Tensor | None, batch: int, size: int, dtype: torch.dtype) -> np.ndarray:
    """The initial state as a complex array (B, P) (`as_array`); zeros of `dtype` if None."""
    if initial_state is None:
        return np.zeros((batch, size), dtype=NUMPY_COMPLEX[dtype])
    return as_array(initial_state)


def sink(batch: int, splits: int) -> np.ndarray:
    """Where each task stores the sum of its `touch_rows` loads (read by no one)."""
    return np.empty(batch * splits, dtype=np.float64)


def real_view(a: np.ndarray) -> np.ndarray:
    """A C-contiguous complex array (..., P) as floats (..., 2P), (re, im) interleaved, sharing memory."""
    return a.view(a.real.dtype)


def floats(t: torch.Tensor) -> np.ndarray:
    """A complex tensor (..., P) as a float array (..., 2P), (re, im) interleaved (`as_array`)."""
    return real_view(as_array(t))


def complex_tensor(floats: np.ndarray) -> torch.Tensor:
    """A kernel's float output (..., 2P) as a complex tensor (..., P), sharing memory."""
    return torch.from_numpy(floats.view(np.complex64 if floats.dtype == np.float32 else np.complex128))


# ---------------------------------------------------------------------------- threads
def thread_splits(batch: int, size: int) -> int:
    """State blocks per sequence: enough tasks for every thread, blocks of >= 16 states."""
    threads = numba.get_num_threads()
    return max(1, min(size // 16, -(-threads // batch)))


@numba.njit(inline="always")
def task_span(task, splits, size):  # pragma: no cover - compiled
    """(b, split, lo, hi) of a kernel's prange task over batch * splits: the states lo:hi
    (block `split` of `splits`, as thread_splits chooses) of sequence b."""
    width = (size + splits - 1) // splits
    b, split = task // splits, task % splits
    lo = split * width
    return b, split, lo, min(size, lo + width)


@numba.njit(inline="always")
def touch_rows(arr, b, start, rows, lo, hi):  # pragma: no cover - compiled
    """Read one value per 64-byte cache line of arr[b, start + r, lo:hi] (float or complex)
    for r < rows, in ascending order, skipping rows outside [0, L): it brings a block into
    cache before a recurrence walks it backwards (a walk the prefetchers of some machines do
    not follow). Returns the sum of the real parts read; the caller stores that sum, so the
    loads cannot be optimised away."""
    step = max(1, 64 // arr.itemsize)
    total = 0.0
    for r in range(rows):
        k = start + r
        if 0 <= k < arr.shape[1] and hi > lo:
            row = arr[b, k]
            for j in range(lo, hi, step):
                total += row[j].real
            total += row[hi - 1].real  # the last line, when lo is not at a line's start
    return total


# ---------------------------------------------------------------------------- ops
class KernelOp:
    """`impl` registered as the custom op s5ssm::<name> (torch >= 2.4, with `fake` for
    the shapes and `schema`, torch's signature string), so that torch.compile'd code calls
    it as an opaque op instead of tracing into numba or Triton. Called while torch.compile
    traces, it is the op; otherwise `impl` directly (the op's dispatch costs ~0.1 ms a call).
    With torch 2.3 it is always `impl` (eager autograd still works)."""

    def __init__(self, name: str, impl: Callable, schema: str, fake: Callable) -> None:
        self.impl = self.op = impl
        if hasattr(torch.library, "custom_op"):
            self.op = torch.library.custom_op(f"s5ssm::{name}", impl, mutates_args=(), schema=schema)
            self.op.register_fake(fake)

    def __call__(self, *args):
        return (self.op if is_compiling() else self.impl)(*args)


def differentiable(
    forward: KernelOp, backward: KernelOp, backward_inputs: Callable[[tuple, torch.Tensor], tuple]
) -> Callable:
    """`forward(*inputs) -> out` with autograd through `backward`.

    backward_inputs(inputs, out): the leading arguments of `backward`, which also gets the
    gradient of out last and returns the gradients of the leading `inputs`, in order (the
    others, flags and options, get none). Only what backward_inputs picks is kept for
    backward. Without a gradient to compute, `forward` runs alone."""

    class KernelFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            out = forward(*inputs)
            kept = backward_inputs(inputs, out)
            ctx.slots = tuple(x is None or isinstance(x, torch.Tensor) for x in kept)
            ctx.values = tuple(x for x, slot in zip(kept, ctx.slots) if not slot)  # flags, options
            ctx.present = tuple(x is not None for x in inputs)
            ctx.save_for_backward(*(x for x, slot in zip(kept, ctx.slots) if slot))
            return out

        @staticmethod
        def backward(ctx, grad):
            tensors, values = iter(ctx.saved_tensors), iter(ctx.values)
            grads = backward(*(next(tensors) if slot else next(values) for slot in ctx.slots), grad)
            grads = tuple(grads) + (None,) * (len(ctx.present) - len(grads))
            return tuple(g if present else None for g, present in zip(grads, ctx.present))

    def run(*inputs):
        if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs):
            return KernelFunction.apply(*inputs)
        return forward(*inputs)

    return run
