"""Compiled CPU scan with the discretisation fused in, for a step_scale that varies per step.

For irregular sampling (step_scale s of shape (B, L)) each step has its own discretisation
of the same continuous eigenvalues Λ (P,) and steps Δ (P,): with w = Δ_p s_{b,k},

    zoh:       Λ̄ = exp(Λw),                  γ = expm1(Λw) / Λ
    bilinear:  Λ̄ = (1 + Λw/2) / (1 - Λw/2),  γ = w / (1 - Λw/2)
    x_k = Λ̄_k x_{k-1} + γ_k v_k,             v = B~u  (B, L, P)

The unfused path (s5ssm.discretize + scan.linear_scan, kept as the reference and for
other devices) materialises Λ̄ and γ as complex (B, L, P) tensors and keeps them, γv and
their gradients for backward. Here Λ̄ and γ are computed in the kernels, one row of
states at a time: forward writes only the states; backward is the reverse scan with
Λ̄, γ recomputed, and reduces dΛ, dΔ (per sequence, summed after) and ds (per step) on
the fly. Only v and the states are saved for backward, as for a scalar step.

Per element the discretisation costs an exp and a sin/cos pair, computed by the
vectorised polynomial code of discretize_kernel.py (shared with the streaming step), in
the precision of the data.

Gradients follow PyTorch's convention for complex tensors (grad = conj(∂f/∂z)·grad_out
for holomorphic f; the real part for a real input). A zero step (w = 0, a masked step of
a non-contiguous mask) gives Λ̄ = 1 and γ = 0: the state passes through.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import prange

from .._checks import expect_bool_mask, expect_dtype, expect_same_device, expect_shape, expect_tensor
from .bridge import (KernelOp, as_array, differentiable, flags, output_like, sink, state_array, task_span, touch_rows,
                     writable)
from .bridge import thread_splits as _splits  # a global of this module: replaceable to force a split
from .discretize_kernel import discretize_row

METHODS = ("zoh", "bilinear")
# Time steps per block of a backwards walk, touched first (bridge.touch_rows). The same value
# as cpu._BLOCK, but defined here: numba's cache of this file's kernels keeps the globals
# they read as they were when compiled, and is refreshed only when this file changes.
_BLOCK = 128
_FLAGS = {"contract"}  # fused multiply-adds (one rounding instead of two); no other fast-math


# ---------------------------------------------------------------------------- rows of states
# One row = the states lo .. hi of one (sequence, step); the kernels pass row views
# (x[b, k, lo:hi]: 1-d, contiguous) so that every loop indexes with its own counter, which
# LLVM vectorises. lam, inv_lam (Λ, 1/Λ): complex (n,) and delta (Δ): real (n,), in the
# precision of the data (float32 for complex64), which Λ̄ and γ are computed in.
@numba.njit(inline="always")
def _step_row(lam_bar, gamma, x, v, out):  # pragma: no cover - compiled
    """x = out = Λ̄ x + γ v: one step of the recurrence (out may be v)."""
    for j in range(out.shape[0]):
        y = lam_bar[j] * x[j] + gamma[j] * v[j]
        x[j] = y
        out[j] = y


@numba.njit(inline="always")
def _adjoint_recurrence_row(zoh, lam_bar, gamma, grad, carry, d_v, q):  # pragma: no cover - compiled
    """The adjoint's recurrence on a row: g = dx + carry (carry: conj(Λ̄_next) g_next),
    d v = conj(γ) g (d_v may be grad: each element is read before it is written), then
    carry = c = conj(Λ̄) g. q (n,) complex128 holds g, then for bilinear conj(inv²) g
    (inv = (Λ̄ + 1)/2), which the sums take; for ZOH they take the new carry c. Separate
    loops of few arrays each, as in `_adjoint_sums_row`."""
    for j in range(carry.shape[0]):
        q[j] = grad[j] + carry[j]
    for j in range(carry.shape[0]):
        d_v[j] = np.conj(gamma[j]) * q[j]
        carry[j] = np.conj(lam_bar[j]) * q[j]
    if not zoh:
        for j in range(carry.shape[0]):
            inv = 0.5 * (lam_bar[j] + 1.0)
            q[j] = np.conj(inv * inv) * q[j]


@numba.njit(inline="always")
def _adjoint_sums_row(zoh, lam_delta, delta, s, v, x_prev, q, d_v, acc, d_s_row):  # pragma: no cover - compiled
    """The chain rule of one step on a row, after `_adjoint_recurrence_row` (q there; for
    ZOH pass the new carry as q). lam_delta = conj(Λ)·Δ complex128 (n,); acc (3, n).

    ZOH: with dΛ̄ = g conj(x_prev), dγ = g conj(v), t1 = conj(Λ̄) dΛ̄ = c conj(x_prev),
    t2 = conj(Λ̄) dγ = c conj(v) and ∂Λ̄/∂Λ = wΛ̄, ∂Λ̄/∂w = ΛΛ̄, ∂γ/∂Λ = (wΛ̄ - γ)/Λ,
    ∂γ/∂w = Λ̄ (w = Δs), PyTorch's convention gives dΛ += w t1 + conj(1/Λ)(w t2 - conj(γ) dγ),
    dw = Re(conj(Λ) t1 + t2). Λ and Δ are constant per state, so acc sums s·t1, s·t2,
    conj(γ) dγ = (d v) conj(v) over the steps and `finalize` applies Λ, Δ once.

    Bilinear: with inv = 1/(1 - wΛ/2) = (Λ̄ + 1)/2, ∂Λ̄/∂Λ = w·inv², ∂Λ̄/∂w = Λ·inv²,
    ∂γ/∂Λ = (w²/2)·inv², ∂γ/∂w = inv²; with t1 = q conj(x_prev), t2 = q conj(v) (q =
    conj(inv²) g): dΛ += w t1 + (w²/2) t2 and dw = Re(conj(Λ) t1 + t2); acc sums s·t1, s·t2,
    (s²/2)·t2.

    d_s_row[j] = dw_j Δ_j, whose sum over the row is the gradient of s (`_row_sum`). Three
    loops of few arrays each, not one: LLVM vectorises a loop only while the runtime
    overlap checks between its arrays stay few."""
    acc_1, acc_2, acc_3 = acc[0], acc[1], acc[2]
    for j in range(q.shape[0]):
        t1 = q[j] * np.conj(x_prev[j])
        acc_1[j] += s * t1
        d_s_row[j] = (lam_delta[j] * t1).real
    for j in range(q.shape[0]):
        t2 = q[j] * np.conj(v[j])
        acc_2[j] += s * t2
        d_s_row[j] += t2.real * delta[j]
    if zoh:
        for j in range(q.shape[0]):
            acc_3[j] += d_v[j] * np.conj(v[j])
    else:
        half_s2 = 0.5 * s * s
        for j in range(q.shape[0]):
            acc_3[j] += half_s2 * (q[j] * np.conj(v[j]))


@numba.njit(fastmath={"reassoc", "contract"})
def _row_sum(row):  # pragma: no cover - compiled
    """Σ row, float64 (n,). Compiled apart, with reassociation allowed, so LLVM sums in
    vector lanes (the kernel's own flags forbid it); the order of the sum depends on the
    row and the vector width, not on the thread count. Reference: sum(row)."""
    total = 0.0
    for j in range(row.shape[0]):
        total += row[j]
    return total


# ---------------------------------------------------------------------------- kernels
@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def _forward_kernel(lam, inv_lam, delta, scale, v, init, resets, reverse, zoh, splits, out, sink):  # pragma: no cover
    """out (B, L, P): the states. lam, inv_lam, delta (P,) as in the row functions; sink as
    in scan/cpu.py. A reverse scan goes block by block, each block's v and out rows touched
    in ascending order first (as in scan/cpu.py)."""
    batch, length, size = v.shape
    blocks = (length + _BLOCK - 1) // _BLOCK
    for task in prange(batch * splits):
        b, _, lo, hi = task_span(task, splits, size)
        lam_bar = np.empty(hi - lo, dtype=v.dtype)
        gamma = np.empty(hi - lo, dtype=v.dtype)
        x = init[b, lo:hi].copy()  # the carried state
        touched = 0.0
        for q in range(blocks):
            k0 = (blocks - 1 - q if reverse else q) * _BLOCK
            rows = min(_BLOCK, length - k0)
            if reverse:
                touched += touch_rows(v, b, k0, rows, lo, hi) + touch_rows(out, b, k0, rows, lo, hi)
            for i in range(rows):
                k = k0 + (rows - 1 - i if reverse else i)
                discretize_row(lam[lo:hi], inv_lam[lo:hi], delta[lo:hi], scale[b, k], zoh, lam_bar, gamma)
                if resets[b, k]:
                    x[:] = 0
                _step_row(lam_bar, gamma, x, v[b, k, lo:hi], out[b, k, lo:hi])
        sink[task] = touched


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def _backward_kernel(lam, inv_lam, delta, scale, v, states, init, resets, reverse, zoh, splits, grad,
                     in_place, d_v, acc, d_scale, d_init, sink):  # pragma: no cover - compiled  # fmt: skip
    """The reverse scan with Λ̄, γ recomputed: d_v (B, L, P), is grad if in_place; acc
    (B, 3, P) complex128 zeros, the sums of the gradient rows (one row per sequence, see
    `finalize`); d_scale (splits, B, L) float64, one row per block of states; d_init (B, P);
    sink as in scan/cpu.py (bridge.touch_rows).

    For a forward scan the adjoint walks memory backwards, which prefetchers that follow
    only ascending streams do not help; that walk goes block by block (_BLOCK steps), each
    block's dx, v, x_{k-1} and d v rows touched in ascending order first (as in
    scan/cpu.py)."""
    batch, length, size = v.shape
    blocks = (length + _BLOCK - 1) // _BLOCK
    backwards = not reverse  # the adjoint of a forward scan walks backwards through memory
    for task in prange(batch * splits):
        b, split, lo, hi = task_span(task, splits, size)
        lam_bar = np.empty(hi - lo, dtype=v.dtype)
        gamma = np.empty(hi - lo, dtype=v.dtype)
        zeros = np.zeros(hi - lo, dtype=v.dtype)  # the carried state at a reset
        carry = np.zeros(hi - lo, dtype=np.complex128)  # conj(Λ̄_{k+1}) g_{k+1}
        qg = np.empty(hi - lo, dtype=np.complex128)  # g, then conj(inv²) g (bilinear)
        sums = np.zeros((3, hi - lo), dtype=np.complex128)
        d_s_row = np.empty(hi - lo, dtype=np.float64)
        lam_delta = np.empty(hi - lo, dtype=np.complex128)  # conj(Λ)·Δ
        for j in range(hi - lo):
            lam_delta[j] = np.conj(np.complex128(lam[lo + j])) * np.float64(delta[lo + j])
        start = init[b, lo:hi]  # x_{-1}
        edge = 0 if backwards else length - 1  # the step whose x_prev is the initial state
        touched = 0.0
        for q in range(blocks):
            k0 = (blocks - 1 - q if backwards else q) * _BLOCK
            rows = min(_BLOCK, length - k0)
            if backwards:
                touched += touch_rows(grad, b, k0, rows, lo, hi) + touch_rows(v, b, k0, rows, lo, hi)
                touched += touch_rows(states, b, k0 - 1, rows, lo, hi)
                if not in_place:
                    touched += touch_rows(d_v, b, k0, rows, lo, hi)
            for i in range(rows):
                k = k0 + (rows - 1 - i if backwards else i)  # against the scan's direction
                s = scale[b, k]
                discretize_row(lam[lo:hi], inv_lam[lo:hi], delta[lo:hi], s, zoh, lam_bar, gamma)
                x_prev = start if k == edge else states[b, k - 1 if backwards else k + 1, lo:hi]
                x_prev = zeros if resets[b, k] else x_prev
                g = grad[b, k, lo:hi]
                dv = g if in_place else d_v[b, k, lo:hi]
                _adjoint_recurrence_row(zoh, lam_bar, gamma, g, carry, dv, qg)
                _adjoint_sums_row(zoh, lam_delta, delta[lo:hi], s, v[b, k, lo:hi], x_prev, carry if zoh else qg, dv,
                                  sums, d_s_row)  # fmt: skip
                if resets[b, k]:
                    carry[:] = 0
                d_scale[split, b, k] = _row_sum(d_s_row)
        acc[b, :, lo:hi] = sums
        d_init[b, lo:hi] = carry
        sink[task] = touched


def _arrays(Lambda, delta, scale, initial_state, v):
    """The kernels' inputs as NumPy arrays (bridge.as_array) in v's precision: Λ, 1/Λ (computed
    in complex128) and Δ (P,); scale (B, L); and the initial state (B, P), zeros if None."""
    lam = Lambda.detach().to(torch.complex128)
    as_numpy = lambda t, dtype: as_array(t.to(dtype))  # noqa: E731
    return (as_numpy(lam, v.dtype), as_numpy(1 / lam, v.dtype), as_numpy(delta, v.real.dtype),
            as_numpy(scale, v.real.dtype), state_array(initial_state, v.shape[0], v.shape[2], v.dtype))  # fmt: skip


def finalize(acc: torch.Tensor, Lambda: torch.Tensor, delta: torch.Tensor, zoh: bool):
    """(dΛ complex (P,), dΔ real (P,)) from the kernel's sums acc (3, P) complex128
    (`_adjoint_sums_row`), in float64 until the final cast."""
    lam, step = Lambda.detach().to(torch.complex128), delta.detach().to(torch.float64)
    first, second, third = acc
    if zoh:
        d_lam = step * first + (1 / lam).conj() * (step * second - third)
    else:
        d_lam = step * first + step**2 * third
    d_delta = (lam.conj() * first + second).real
    return d_lam.to(Lambda.dtype), d_delta.to(delta.dtype)


def _forward_impl(Lambda, delta, scale, v, initial_state, resets, reverse: bool, zoh: bool) -> torch.Tensor:
    lam, inv_lam, dl, sc, init = _arrays(Lambda, delta, scale, initial_state, v)
    v = v.contiguous()
    out = output_like(v)
    batch, length, size = v.shape
    splits = _splits(batch, size)
    _forward_kernel(lam, inv_lam, dl, sc, as_array(v), init, flags(resets, batch, length), reverse, zoh,
                    splits, writable(out), sink(batch, splits))  # fmt: skip
    return out


def _backward_impl(
    Lambda, delta, scale, v, states, initial_state, resets, reverse: bool, zoh: bool, grad, in_place: bool = False
):
    """(dΛ, dΔ, d scale, d v, d initial_state); in_place: d v is written over `grad`
    (contiguous, owned by the caller: the kernel reads each element of grad before it
    writes the same element of d v)."""
    lam, inv_lam, dl, sc, init = _arrays(Lambda, delta, scale, initial_state, v)
    batch, length, size = v.shape
    splits = _splits(batch, size)
    d_v = grad if in_place else output_like(v)
    acc = torch.zeros(batch, 3, size, dtype=torch.complex128)
    d_scale = np.zeros((splits, batch, length), dtype=np.float64)
    d_init = np.empty_like(init)
    _backward_kernel(
        lam, inv_lam, dl, sc, as_array(v), as_array(states), init, flags(resets, batch, length), reverse, zoh,
        splits, as_array(grad), in_place, writable(d_v), acc.numpy(), d_scale, d_init, sink(batch, splits),
    )  # fmt: skip
    d_lam, d_delta = finalize(acc.sum(dim=0), Lambda, delta, zoh)
    return d_lam, d_delta, torch.from_numpy(d_scale.sum(axis=0)).to(scale.dtype), d_v, torch.from_numpy(d_init)


def forward_fake(Lambda, delta, scale, v, initial_state, resets, reverse, zoh):
    return output_like(v)


def backward_fake(Lambda, delta, scale, v, states, initial_state, resets, reverse, zoh, grad):
    batch, _, size = v.shape
    return (torch.empty_like(Lambda), torch.empty_like(delta), torch.empty_like(scale), output_like(v),
            v.new_empty(batch, size))  # fmt: skip


# The ops' signatures and shapes, shared with triton_irregular.py (same arguments, same results)
FORWARD_SCHEMA = ("(Tensor Lambda, Tensor delta, Tensor scale, Tensor v, Tensor? initial_state, Tensor? resets, "
                  "bool reverse, bool zoh) -> Tensor")  # fmt: skip
BACKWARD_SCHEMA = ("(Tensor Lambda, Tensor delta, Tensor scale, Tensor v, Tensor states, Tensor? initial_state, "
                   "Tensor? resets, bool reverse, bool zoh, Tensor grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def backward_inputs(inputs: tuple, states: torch.Tensor) -> tuple:
    """The arguments of a backward kernel before grad: the forward's, the states after v."""
    return (*inputs[:4], states, *inputs[4:])


_irregular_scan = differentiable(
    KernelOp("irregular_scan_forward", _forward_impl, FORWARD_SCHEMA, forward_fake),
    KernelOp("irregular_scan_backward", _backward_impl, BACKWARD_SCHEMA, backward_fake), backward_inputs,
)


def check_inputs(Lambda, delta, scale, v, initial_state, resets) -> None:
    """Raise on a wrong type, dtype, shape or device, naming the argument."""
    v = expect_tensor("v", v)
    expect_dtype("v", v, (torch.complex64, torch.complex128))
    expect_shape("v", v, (None, None, None), "BLP")
    batch, length, size = v.shape
    expect_dtype("Lambda", expect_tensor("Lambda", Lambda), v.dtype)
    expect_shape("Lambda", Lambda, (size,), "P")
    expect_dtype("delta", expect_tensor("delta", delta), (torch.float32, torch.float64))
    expect_shape("delta", delta, (size,), "P")
    expect_dtype("scale", expect_tensor("scale", scale), (torch.float32, torch.float64))
    expect_shape("scale", scale, (batch, length), "BL")
    for name, tensor in (("Lambda", Lambda), ("delta", delta), ("scale", scale)):
        expect_same_device(name, tensor, v)
    if initial_state is not None:
        expect_dtype("initial_state", expect_tensor("initial_state", initial_state), v.dtype)
        expect_shape("initial_state", initial_state, (batch, size), "BP")
        expect_same_device("initial_state", initial_state, v)
    if resets is not None:
        expect_same_device("resets", expect_bool_mask("resets", resets, batch, length), v)


def irregular_scan(
    Lambda: torch.Tensor,
    delta: torch.Tensor,
    scale: torch.Tensor,
    v: torch.Tensor,
    method: str = "zoh",
    *,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """States of x_k = Λ̄(Δ s_k) x_{k-1} + γ(Δ s_k) v_k, discretised inside the kernels.

    Same recurrence, resets and reverse semantics as `linear_scan` (scan/reference.py) on
    `discretize(Λ, ·, method, s)`: in reverse, Λ̄_k (from s_k) multiplies x_{k+1}.
    Differentiable w.r.t. Lambda, delta, scale, v and initial_state.

    Args:
        Lambda: complex (P,) continuous eigenvalues, v's dtype.
        delta: real (P,) steps Δ (exp(log_step) · step_rescale).
        scale: real (B, L) step_scale per step (0 at a step to skip).
        v: complex64/128 (B, L, P) B~u, before discretisation; CPU.
        method: "zoh" or "bilinear".
        initial_state: complex (B, P) or None; resets: bool (B, L) or None; reverse: bool.

    Returns:
        complex (B, L, P) states.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_inputs(Lambda, delta, scale, v, initial_state, resets)
    if v.device.type != "cpu":
        raise ValueError(f"v is on {v.device}: irregular_scan runs on CPU tensors")
    real = v.real.dtype
    delta, scale = delta.to(real), scale.to(real)
    zoh = method == "zoh"
    return _irregular_scan(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)
