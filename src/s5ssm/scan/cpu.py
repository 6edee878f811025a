"""Compiled CPU linear scan (numba): fused forward, and a backward that is the reverse scan.

Same signature and result as `reference.scan`:

    lambda_bar     complex64/128 (P,), (1|B, 1, P) or (1|B, L, P)
    bu             complex (B, L, P)
    initial_state  complex (B, P) or None
    reverse        bool
    resets         bool (B, L) or None
    returns        complex (B, L, P) states

Forward: x_k = Λ̄_k x_{k-1} + bu_k, one pass that reads bu once and writes the states once.
Backward, for the forward direction (the adjoint of the recurrence):
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
whose arrays need many runtime overlap checks; a carry in planes would add one more
array to the loop). Every input is read, and every output written, once.

Large outputs (the forward's states, the backward's d bu; at least
nontemporal.STREAM_BYTES, and not written in place) are stored non-temporally, without
the read of the old line that a plain store makes: the forward then moves two streams of
bytes instead of three, and a backwards walk no longer touches the output. The forward's
streamed step is written as explicit vectors (nontemporal.stream_step), which avoids the
shuffles LLVM's own vectorisation adds on interleaved pairs. The backward computes a row
of d bu in cache and streams it (nontemporal.store_row).

A walk backwards through memory (the reverse scan, and the backward of a forward scan) is
slow on CPUs whose hardware prefetchers follow only ascending streams. Those walks go
block by block (_BLOCK steps): each block's rows (the inputs, the outputs) are first read
in ascending order, one value per cache line (bridge.touch_rows), and the recurrence then
runs over them from the cache, without copies of the block.

Both kernels are registered as torch custom ops (bridge.KernelOp), so torch.compile'd
code calls them instead of tracing into numba, and joined for autograd by
bridge.differentiable.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

from .bridge import (KernelOp, complex_tensor, differentiable, flags, floats, output_like, real_view, sink,
                     state_array, task_span, touch_rows, writable)
from .bridge import thread_splits as _splits  # a global of this module: replaceable to force a split
from .nontemporal import drain, lambda_pairs, store_row, stream_step, streams

_BLOCK = 128  # time steps per block of a backwards walk (module docstring)


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
    sink float64 (B * splits,) receives the sums of touch_rows. A reverse scan goes block by
    block, each block touched in ascending order first (module docstring). stream: out is
    written with non-temporal stores (not with in_place), so it is not touched."""
    batch, length, size2 = bu.shape
    size = size2 // 2
    lam_b = 1 if lam.shape[0] > 1 else 0
    lam_l = 1 if lam.shape[1] > 1 else 0
    blocks = (length + _BLOCK - 1) // _BLOCK
    for task in prange(batch * splits):
        b, _, lo, hi = task_span(task, splits, size)
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
                    touched += touch_rows(out, b, k0, rows, 2 * lo, 2 * hi)
                if not in_place:
                    touched += touch_rows(bu, b, k0, rows, 2 * lo, 2 * hi)
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
        b, _, lo, hi = task_span(task, splits, size)
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
                touched += touch_rows(grad, b, k0, rows, 2 * lo, 2 * hi)
                touched += touch_rows(states, b, k0 - 1, rows, 2 * lo, 2 * hi)
                if not (in_place or stream):
                    touched += touch_rows(d_bu, b, k0, rows, 2 * lo, 2 * hi)
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


def _lam_floats(lambda_bar: torch.Tensor) -> np.ndarray:
    """Λ̄ (P,), (1|B, 1, P) or (1|B, L, P) as floats (1|B, 1|L, 2P)."""
    lam = floats(lambda_bar)
    return lam.reshape(1, 1, -1) if lam.ndim == 1 else lam


def _forward_impl(lambda_bar, bu, initial_state, resets, reverse: bool, in_place: bool = False) -> torch.Tensor:
    """The states (B, L, P); in_place: written over `bu` (contiguous, owned by the caller).

    The arguments are NumPy views and NumPy zeros, with as few torch ops as possible: the
    Python before a kernel runs on caches that the previous scan has flushed, where each
    torch op costs tens of microseconds (with view_as_real and new_zeros, a B=8, L=4096,
    P=128 forward spent ~0.2 ms, about a tenth of its time, outside the kernel).
    """
    bu = bu if in_place else bu.contiguous()
    out = bu if in_place else output_like(bu)
    batch, length, size = bu.shape
    splits = _splits(batch, size)
    stream = not in_place and streams(out.nbytes)
    _forward_kernel(
        _lam_floats(lambda_bar), floats(bu), real_view(state_array(initial_state, batch, size, bu.dtype)),
        flags(resets, batch, length), reverse, in_place, stream, splits, real_view(writable(out)),
        sink(batch, splits),
    )  # fmt: skip
    return out


def _backward_impl(lambda_bar, states, initial_state, resets, reverse: bool, grad, in_place: bool = False):
    """(d Λ̄, d bu, d initial_state); in_place: d bu is written over `grad` (contiguous, owned by the caller)."""
    batch, length, size = states.shape
    lam = _lam_floats(lambda_bar)
    d_bu = grad if in_place else output_like(states)
    d_lam = np.zeros((batch, lam.shape[1], 2 * size), dtype=lam.dtype)
    d_init = np.empty((batch, 2 * size), dtype=lam.dtype)
    init = real_view(state_array(initial_state, batch, size, states.dtype))
    splits = _splits(batch, size)
    stream = not in_place and streams(d_bu.nbytes)
    _backward_kernel(
        lam, floats(states), init, flags(resets, batch, length), reverse, in_place, stream, splits, floats(grad),
        real_view(writable(d_bu)), d_lam, d_init, sink(batch, splits),
    )  # fmt: skip
    if lam.shape[0] == 1:
        d_lam = d_lam.sum(axis=0, keepdims=True)
    return complex_tensor(d_lam).reshape(lambda_bar.shape), d_bu, complex_tensor(d_init)


# The ops' signatures and shapes, shared with triton_scan.py (same arguments, same results)
FORWARD_SCHEMA = "(Tensor lambda_bar, Tensor bu, Tensor? initial_state, Tensor? resets, bool reverse) -> Tensor"
BACKWARD_SCHEMA = ("(Tensor lambda_bar, Tensor states, Tensor? initial_state, Tensor? resets, bool reverse, "
                   "Tensor grad) -> (Tensor, Tensor, Tensor)")  # fmt: skip


def forward_fake(lambda_bar, bu, initial_state, resets, reverse):
    return output_like(bu)


def backward_fake(lambda_bar, states, initial_state, resets, reverse, grad):
    batch, _, size = states.shape
    return torch.empty_like(lambda_bar), output_like(states), states.new_empty(batch, size)


def backward_inputs(inputs: tuple, states: torch.Tensor) -> tuple:
    """The arguments of a backward kernel before grad: the forward's with the states in place
    of bu (which is not kept)."""
    return (inputs[0], states, *inputs[2:])


_scan = differentiable(KernelOp("scan_forward", _forward_impl, FORWARD_SCHEMA, forward_fake),
                       KernelOp("scan_backward", _backward_impl, BACKWARD_SCHEMA, backward_fake), backward_inputs)


def scan(
    lambda_bar: torch.Tensor,
    bu: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Compiled scan; same signature and result as `reference.scan` (module docstring)."""
    return _scan(lambda_bar, bu, initial_state, resets, reverse)
