"""Compiled CPU linear scan (numba): fused forward, and a backward that is the reverse scan.

Same signature and result as `reference.scan`:

    lambda_bar     complex64/128 (P,), (1|B, 1, P) or (1|B, L, P)
    bu             complex (B, L, P)
    initial_state  complex (B, P) or None
    reverse        bool
    resets         bool (B, L) or None
    returns        complex (B, L, P) states

Forward: x_k = Λ̄_k x_{k-1} + bu_k, one pass that reads bu once and writes the states once.
Backward (shared/DESIGN.md), for the forward direction:
    g_k = dx_k + conj(Λ̄_{k+1}) g_{k+1}      (0 across a reset at k+1)
    d bu_k = g_k,   d Λ̄_k = g_k conj(x_{k-1}) (0 at a reset),   d x_{-1} = conj(Λ̄_0) g_0
mirrored for reverse. d Λ̄ is summed inside the kernel into its own layout, one row per
sequence ((B, 1|L, P)), and over the batch afterwards if Λ̄ is shared: a time-invariant Λ̄
never gets a [B, L, P] gradient. Only the inputs and the states are saved for backward.

Work is split over numba's threads by sequence (and by blocks of states when there are
fewer sequences than threads). The kernels see the complex tensors as float arrays with
(re, im) interleaved, and so is what they carry from step to step (the state, or the
gradient carry) while Λ̄ is held in two planes, real and imaginary: the complex
multiply-add is real arithmetic on few arrays, which LLVM vectorises (it gives up on loops
whose arrays need many runtime overlap checks). With the carry in planes as well (one
more array in the loop) the forward was slower. Every input is still read, and every
output written, once.

Large outputs (the forward's states, the backward's d bu; at least
nontemporal.STREAM_BYTES, and not written in place) are stored non-temporally, without
the read of the old line that a plain store makes: the forward then moves two streams of
bytes instead of three, and a backwards walk no longer touches the output. The forward's
streamed step is written as explicit vectors (nontemporal.stream_step): with the memory
traffic cut, the shuffles of LLVM's own vectorisation showed in its time. The backward
computes a row of d bu in cache and streams it (nontemporal.store_row).

A walk backwards through memory (the reverse scan, and the backward of a forward scan)
runs ~2.5x slower than a forward one on this machine, whose prefetchers do not follow a
descending stream. Those walks go block by block (_BLOCK steps): each block's rows (the
inputs, the outputs) are first read in ascending order, one value per cache line
(_touch_rows), and the recurrence then runs over them from the cache. This was faster
than copying the block into buffers ascending, running there and copying out.

With torch.library.custom_op (torch >= 2.4) both kernels are registered as ops, so
torch.compile'd code calls them instead of tracing into numba; eager code calls the
functions directly (the op's dispatch cost ~0.1 ms a call).
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from .._checks import is_compiling
from .nontemporal import drain, lambda_pairs, store_row, stream_step, streams


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

_BLOCK = 128  # time steps per block of a backwards walk (module docstring)
_NUMPY = {torch.complex64: np.complex64, torch.complex128: np.complex128}


@numba.njit(inline="always")
def _touch_rows(arr, b, start, rows, lo, hi):  # pragma: no cover - compiled
    """Read one value per 64-byte cache line of arr[b, start + r, lo:hi] (float or complex)
    for r < rows, in ascending order, skipping rows outside [0, L): it brings a block into
    cache before a recurrence walks it backwards. Returns the sum of the real parts read;
    the caller stores that sum, so the loads cannot be optimised away."""
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


@numba.njit(inline="always")
def _task_span(task, splits, size):  # pragma: no cover - compiled
    """(b, split, lo, hi) of a kernel's prange task over batch * splits: the states lo:hi
    (block `split` of `splits`, as _splits chooses) of sequence b."""
    width = (size + splits - 1) // splits
    b, split = task // splits, task % splits
    lo = split * width
    return b, split, lo, min(size, lo + width)


@numba.njit(inline="always")
def _planes(row, l_re, l_im):  # pragma: no cover - compiled
    """Λ̄'s row (2n,), (re, im) interleaved, into planes l_re, l_im (n,)."""
    for j in range(l_re.shape[0]):
        l_re[j] = row[2 * j]
        l_im[j] = row[2 * j + 1]


@numba.njit(inline="always")
def _step(u, o, aliased, stream, reset, x, l_re, l_im):  # pragma: no cover - compiled
    """One step on interleaved rows: x = u at a reset, else x = Λ̄ x + u; o = x. The state x
    is interleaved like the rows, Λ̄ is in planes (re, im), (n,) each. aliased: o is u
    (read through o, so LLVM sees one array). stream: o's lines are streamed, and Λ̄ comes
    as pairs (2n,) each (nontemporal.stream_step; these plain loops are its reference);
    never with aliased."""
    if stream:
        stream_step(x, u, o, l_re, l_im, reset)
        return
    n = l_re.shape[0]
    if reset:
        for j in range(2 * n):
            x[j] = u[j]
            o[j] = u[j]
    elif aliased:
        for j in range(n):
            re = l_re[j] * x[2 * j] - l_im[j] * x[2 * j + 1] + o[2 * j]
            im = l_re[j] * x[2 * j + 1] + l_im[j] * x[2 * j] + o[2 * j + 1]
            x[2 * j] = re
            x[2 * j + 1] = im
            o[2 * j] = re
            o[2 * j + 1] = im
    else:
        for j in range(n):
            re = l_re[j] * x[2 * j] - l_im[j] * x[2 * j + 1] + u[2 * j]
            im = l_re[j] * x[2 * j + 1] + l_im[j] * x[2 * j] + u[2 * j + 1]
            x[2 * j] = re
            x[2 * j + 1] = im
            o[2 * j] = re
            o[2 * j + 1] = im


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _forward_kernel(lam, bu, init, resets, reverse, in_place, stream, splits, out, sink):  # pragma: no cover - compiled
    """Float views: lam (B|1, L|1, 2P), bu/out (B, L, 2P), init (B, 2P), (re, im) interleaved;
    sink float64 (B * splits,) receives the sums of _touch_rows. A reverse scan goes block by
    block, each block touched in ascending order first (module docstring). stream: out is
    written with non-temporal stores (not with in_place), so it is not touched."""
    batch, length, size2 = bu.shape
    size = size2 // 2
    lam_b = 1 if lam.shape[0] > 1 else 0
    lam_l = 1 if lam.shape[1] > 1 else 0
    blocks = (length + _BLOCK - 1) // _BLOCK
    for task in prange(batch * splits):
        b, _, lo, hi = _task_span(task, splits, size)
        n = hi - lo
        x = np.empty(2 * n, dtype=bu.dtype)  # the carried state, interleaved
        l_re = np.empty(2 * n if stream else n, dtype=bu.dtype)  # Λ̄ as _step takes it
        l_im = np.empty(2 * n if stream else n, dtype=bu.dtype)
        x[:] = init[b, 2 * lo : 2 * hi]
        touched = 0.0
        for q in range(blocks):
            k0 = (blocks - 1 - q if reverse else q) * _BLOCK
            rows = min(_BLOCK, length - k0)
            if reverse:
                if not stream:
                    touched += _touch_rows(out, b, k0, rows, 2 * lo, 2 * hi)
                if not in_place:
                    touched += _touch_rows(bu, b, k0, rows, 2 * lo, 2 * hi)
            for i in range(rows):
                k = k0 + (rows - 1 - i if reverse else i)
                if (q == 0 and i == 0) or lam_l == 1:
                    row = lam[lam_b * b, lam_l * k, 2 * lo : 2 * hi]
                    if stream:
                        lambda_pairs(row, l_re, l_im)
                    else:
                        _planes(row, l_re, l_im)
                o = out[b, k, 2 * lo : 2 * hi]
                u = o if in_place else bu[b, k, 2 * lo : 2 * hi]
                _step(u, o, in_place, stream, resets[b, k], x, l_re, l_im)
        if stream:
            drain()
        sink[task] = touched


@numba.njit(inline="always")
def _adjoint_step(g_in, g_out, x, reset, c, l_re, l_im, s, d_row):  # pragma: no cover - compiled
    """One step of the adjoint on interleaved rows: g = dx + carry -> g_out; at a reset the
    carry restarts at 0, else dΛ̄ = g conj(x_prev) is added to s, or written to d_row when
    that has a row (time-varying Λ̄), and the carry becomes conj(Λ̄) g. The carry c and the
    sum s are interleaved like the rows, Λ̄ is in planes (re, im)."""
    n = l_re.shape[0]
    if reset:
        for j in range(2 * n):
            g_out[j] = g_in[j] + c[j]
            c[j] = 0.0
    elif d_row.shape[0] > 0:
        for j in range(n):
            g_re = g_in[2 * j] + c[2 * j]
            g_im = g_in[2 * j + 1] + c[2 * j + 1]
            g_out[2 * j] = g_re
            g_out[2 * j + 1] = g_im
            d_row[2 * j] = g_re * x[2 * j] + g_im * x[2 * j + 1]
            d_row[2 * j + 1] = g_im * x[2 * j] - g_re * x[2 * j + 1]
            c[2 * j] = l_re[j] * g_re + l_im[j] * g_im
            c[2 * j + 1] = l_re[j] * g_im - l_im[j] * g_re
    else:
        for j in range(n):
            g_re = g_in[2 * j] + c[2 * j]
            g_im = g_in[2 * j + 1] + c[2 * j + 1]
            g_out[2 * j] = g_re
            g_out[2 * j + 1] = g_im
            s[2 * j] += g_re * x[2 * j] + g_im * x[2 * j + 1]
            s[2 * j + 1] += g_im * x[2 * j] - g_re * x[2 * j + 1]
            c[2 * j] = l_re[j] * g_re + l_im[j] * g_im
            c[2 * j + 1] = l_re[j] * g_im - l_im[j] * g_re


@numba.njit(parallel=True, cache=True, nogil=True, fastmath={"contract"})
def _backward_kernel(lam, states, init, resets, reverse, in_place, stream, splits, grad, d_bu, d_lam, d_init, sink):  # pragma: no cover
    """Float views as in _forward_kernel; d_lam (B, 1|L, 2P) zeros, d_init (B, 2P), sink as
    in _forward_kernel. in_place: d_bu is grad (read then overwritten, element by element;
    the step then sees one array, as _step does). The adjoint runs against the scan's
    direction; for a forward scan that is a walk backwards, block by block, each block's dx,
    x_{k-1} and d bu rows touched in ascending order first (module docstring). stream: d bu
    is written with non-temporal stores from a row in cache (not with in_place), and not
    touched."""
    batch, length, size2 = states.shape
    size = size2 // 2
    lam_b = 1 if lam.shape[0] > 1 else 0
    lam_l = 1 if lam.shape[1] > 1 else 0
    blocks = (length + _BLOCK - 1) // _BLOCK
    backwards = not reverse
    for task in prange(batch * splits):
        b, _, lo, hi = _task_span(task, splits, size)
        n = hi - lo
        c = np.zeros(2 * n, dtype=states.dtype)  # carry: conj(Λ̄_{k+1}) g_{k+1}, interleaved
        l_re = np.empty(n, dtype=states.dtype)
        l_im = np.empty(n, dtype=states.dtype)
        s = np.zeros(2 * n, dtype=states.dtype)  # Σ_k dΛ̄_k for a time-invariant Λ̄, interleaved
        g = np.empty(2 * n, dtype=states.dtype)  # a d bu row on its way to be streamed
        no_row = d_lam[b, 0, 0:0]
        start = init[b, 2 * lo : 2 * hi]
        edge = 0 if backwards else length - 1  # the step whose x_prev is the initial state
        touched = 0.0
        for q in range(blocks):
            k0 = (blocks - 1 - q if backwards else q) * _BLOCK
            rows = min(_BLOCK, length - k0)
            if backwards:
                touched += _touch_rows(grad, b, k0, rows, 2 * lo, 2 * hi)
                touched += _touch_rows(states, b, k0 - 1, rows, 2 * lo, 2 * hi)
                if not (in_place or stream):
                    touched += _touch_rows(d_bu, b, k0, rows, 2 * lo, 2 * hi)
            for i in range(rows):
                k = k0 + (rows - 1 - i if backwards else i)
                if (q == 0 and i == 0) or lam_l == 1:
                    _planes(lam[lam_b * b, lam_l * k, 2 * lo : 2 * hi], l_re, l_im)
                d_row = d_lam[b, k, 2 * lo : 2 * hi] if lam_l == 1 else no_row
                g_in = grad[b, k, 2 * lo : 2 * hi]
                x = start if k == edge else states[b, k - 1 if backwards else k + 1, 2 * lo : 2 * hi]
                if in_place:
                    _adjoint_step(g_in, g_in, x, resets[b, k], c, l_re, l_im, s, d_row)
                elif stream:
                    _adjoint_step(g_in, g, x, resets[b, k], c, l_re, l_im, s, d_row)
                    store_row(d_bu[b, k], 2 * lo, g, True)
                else:
                    _adjoint_step(g_in, d_bu[b, k, 2 * lo : 2 * hi], x, resets[b, k], c, l_re, l_im, s, d_row)
        if lam_l == 0:
            d_lam[b, 0, 2 * lo : 2 * hi] = s
        d_init[b, 2 * lo : 2 * hi] = c
        if stream:
            drain()
        sink[task] = touched


def _splits(batch: int, size: int) -> int:
    """State blocks per sequence: enough tasks for every thread, blocks of >= 16 states."""
    threads = numba.get_num_threads()
    return max(1, min(size // 16, -(-threads // batch)))


def _flags(resets: torch.Tensor | None, batch: int, length: int) -> np.ndarray:
    """The resets as a bool array (B, L); all False if None."""
    if resets is None:
        return np.zeros((batch, length), dtype=np.bool_)
    return _array(resets)


def _sink(batch: int, splits: int) -> np.ndarray:
    """Where each task stores the sum of its _touch_rows loads (read by no one)."""
    return np.empty(batch * splits, dtype=np.float64)


def _array(t: torch.Tensor) -> np.ndarray:
    """t as a C-contiguous NumPy array for a kernel to read: t's memory when t is
    contiguous, else a copy, as also when t carries torch's lazy conjugate or negative bit
    (which a view would ignore). Outputs go through _writable.

    NumPy rather than torch ops on purpose: each torch op in a call costs tens of
    microseconds when the scan before it has flushed the caches (see _forward_impl)."""
    return np.ascontiguousarray(t.numpy(force=True))


def _writable(t: torch.Tensor) -> np.ndarray:
    """t's own memory as a NumPy array, for a kernel to write an output into. Raises if t is
    not contiguous or carries a lazy conjugate or negative bit: _array would give the
    kernel a copy, and the output would be lost."""
    if not t.is_contiguous() or t.is_conj() or t.is_neg():
        raise ValueError("a scan kernel writes only into a contiguous tensor without a conjugate or negative bit")
    return t.numpy(force=True)  # force: detach only; no copy of such a tensor


def _output_like(t: torch.Tensor) -> torch.Tensor:
    """An uninitialised contiguous tensor of t's shape and dtype, for a kernel to write (_writable)."""
    return torch.empty_like(t, memory_format=torch.contiguous_format)


def _floats(t: torch.Tensor) -> np.ndarray:
    """A complex tensor (..., P) as a float array (..., 2P), (re, im) interleaved (_array)."""
    return _real_view(_array(t))


def _real_view(a: np.ndarray) -> np.ndarray:
    """A C-contiguous complex array (..., P) as floats (..., 2P), sharing memory."""
    return a.view(a.real.dtype)


def _complex(floats: np.ndarray) -> torch.Tensor:
    """A kernel's float output (..., 2P) as a complex tensor (..., P), sharing memory."""
    return torch.from_numpy(floats.view(np.complex64 if floats.dtype == np.float32 else np.complex128))


def _lam_floats(lambda_bar: torch.Tensor) -> np.ndarray:
    """Λ̄ (P,), (1|B, 1, P) or (1|B, L, P) as floats (1|B, 1|L, 2P)."""
    lam = _floats(lambda_bar)
    return lam.reshape(1, 1, -1) if lam.ndim == 1 else lam


def _state(initial_state: torch.Tensor | None, batch: int, size: int, dtype: torch.dtype) -> np.ndarray:
    """The initial state as a complex array (B, P) (_array); zeros if None."""
    if initial_state is None:
        return np.zeros((batch, size), dtype=_NUMPY[dtype])
    return _array(initial_state)


def _forward_impl(lambda_bar, bu, initial_state, resets, reverse: bool, in_place: bool = False) -> torch.Tensor:
    """The states (B, L, P); in_place: written over `bu` (contiguous, owned by the caller).

    The arguments are NumPy views and NumPy zeros, with as few torch ops as possible: the
    Python before a kernel runs on caches that the previous scan has flushed, where each
    torch op costs tens of microseconds (with view_as_real and new_zeros, a B=8, L=4096,
    P=128 forward spent ~0.2 ms, about a tenth of its time, outside the kernel).
    """
    bu = bu if in_place else bu.contiguous()
    out = bu if in_place else _output_like(bu)
    batch, length, size = bu.shape
    splits = _splits(batch, size)
    stream = not in_place and streams(out.nbytes)
    _forward_kernel(
        _lam_floats(lambda_bar), _floats(bu), _real_view(_state(initial_state, batch, size, bu.dtype)),
        _flags(resets, batch, length), reverse, in_place, stream, splits, _real_view(_writable(out)),
        _sink(batch, splits),
    )  # fmt: skip
    return out


def _backward_impl(lambda_bar, states, initial_state, resets, reverse: bool, grad, in_place: bool = False):
    """(d Λ̄, d bu, d initial_state); in_place: d bu is written over `grad` (contiguous, owned by the caller)."""
    batch, length, size = states.shape
    lam = _lam_floats(lambda_bar)
    d_bu = grad if in_place else _output_like(states)
    d_lam = np.zeros((batch, lam.shape[1], 2 * size), dtype=lam.dtype)
    d_init = np.empty((batch, 2 * size), dtype=lam.dtype)
    init = _real_view(_state(initial_state, batch, size, states.dtype))
    splits = _splits(batch, size)
    stream = not in_place and streams(d_bu.nbytes)
    _backward_kernel(
        lam, _floats(states), init, _flags(resets, batch, length), reverse, in_place, stream, splits, _floats(grad),
        _real_view(_writable(d_bu)), d_lam, d_init, _sink(batch, splits),
    )  # fmt: skip
    if lam.shape[0] == 1:
        d_lam = d_lam.sum(axis=0, keepdims=True)
    return _complex(d_lam).reshape(lambda_bar.shape), d_bu, _complex(d_init)


if hasattr(torch.library, "custom_op"):  # torch >= 2.4: opaque ops for torch.compile

    @torch.library.custom_op("s5ssm::scan_forward", mutates_args=())
    def _forward_op(
        lambda_bar: torch.Tensor,
        bu: torch.Tensor,
        initial_state: torch.Tensor | None,
        resets: torch.Tensor | None,
        reverse: bool,
    ) -> torch.Tensor:
        return _forward_impl(lambda_bar, bu, initial_state, resets, reverse)

    @_forward_op.register_fake
    def _(lambda_bar, bu, initial_state, resets, reverse):
        return _output_like(bu)

    @torch.library.custom_op("s5ssm::scan_backward", mutates_args=())
    def _backward_op(
        lambda_bar: torch.Tensor,
        states: torch.Tensor,
        initial_state: torch.Tensor | None,
        resets: torch.Tensor | None,
        reverse: bool,
        grad: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _backward_impl(lambda_bar, states, initial_state, resets, reverse, grad)

    @_backward_op.register_fake
    def _(lambda_bar, states, initial_state, resets, reverse, grad):
        batch, _, size = states.shape
        return torch.empty_like(lambda_bar), _output_like(states), states.new_empty(batch, size)

else:  # pragma: no cover - torch 2.3: plain functions (eager autograd still works)
    _forward_op, _backward_op = _forward_impl, _backward_impl


def _op_or_impl(op, impl):
    """The registered op while torch.compile traces (it must not trace into numba), else the
    plain function: the op's dispatch costs ~0.1 ms a call in eager mode."""
    return op if is_compiling() else impl


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lambda_bar, bu, initial_state, resets, reverse):
        states = _op_or_impl(_forward_op, _forward_impl)(lambda_bar, bu, initial_state, resets, reverse)
        ctx.save_for_backward(lambda_bar, states, initial_state, resets)
        ctx.reverse = reverse
        return states

    @staticmethod
    def backward(ctx, grad):
        lambda_bar, states, initial_state, resets = ctx.saved_tensors
        backward = _op_or_impl(_backward_op, _backward_impl)
        d_lam, d_bu, d_init = backward(lambda_bar, states, initial_state, resets, ctx.reverse, grad)
        return d_lam, d_bu, d_init if initial_state is not None else None, None, None


def scan(
    lambda_bar: torch.Tensor,
    bu: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compiled scan; same signature and result as `reference.scan` (module docstring)."""
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (lambda_bar, bu, initial_state)
    )
    if not needs_grad:
        return _op_or_impl(_forward_op, _forward_impl)(lambda_bar, bu, initial_state, resets, reverse)
    return _Scan.apply(lambda_bar, bu, initial_state, resets, reverse)
