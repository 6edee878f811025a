"""Compiled CPU scan with the discretisation fused in, for a step_scale that varies per step.

For irregular sampling (step_scale s of shape (B, L)) each step has its own discretisation
of the same continuous eigenvalues Λ (P,) and steps Δ (P,): with w = Δ_p s_{b,k},

    zoh:       Λ̄ = exp(Λw),                  γ = expm1(Λw) / Λ
    bilinear:  Λ̄ = (1 + Λw/2) / (1 - Λw/2),  γ = w / (1 - Λw/2)
    x_k = Λ̄_k x_{k-1} + γ_k v_k,             v = B~u  (B, L, P)

The unfused path (s5ssm.discretize + scan.linear_scan, kept as the reference and for
other devices) materialises Λ̄ and γ as complex (B, L, P) tensors and keeps them, γv and
their gradients for backward. Here Λ̄ and γ are computed in the kernels' inner loop:
forward writes only the states; backward is the reverse scan with conj(Λ̄) recomputed,
and reduces dΛ, dΔ (per sequence, summed after) and ds (per step) on the fly. Only v and
the states are saved for backward, as for a scalar step.

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

from .cpu import _flags, _splits

METHODS = ("zoh", "bilinear")


@numba.njit(inline="always", cache=True)
def _discretize(lam, inv_lam, w, zoh):  # pragma: no cover - compiled
    """(Λ̄, γ) of one state for the step w = Δ·s."""
    if zoh:
        x = lam.real * w
        y = lam.imag * w
        ex = math.exp(x)
        cos_y, sin_y = math.cos(y), math.sin(y)
        half = math.sin(0.5 * y)
        expm1 = complex(math.expm1(x) * cos_y - 2.0 * half * half, ex * sin_y)  # no cancellation near 0
        return complex(ex * cos_y, ex * sin_y), expm1 * inv_lam
    inv = 1.0 / (1.0 - 0.5 * w * lam)
    return (1.0 + 0.5 * w * lam) * inv, w * inv


@numba.njit(parallel=True, cache=True, nogil=True)
def _forward_kernel(lam, inv_lam, delta, scale, v, init, resets, reverse, zoh, splits, out):  # pragma: no cover
    batch, length, size = v.shape
    width = (size + splits - 1) // splits
    for task in prange(batch * splits):
        b = task // splits
        lo = (task % splits) * width
        hi = min(size, lo + width)
        for i in range(length):
            k = length - 1 - i if reverse else i
            prev = k + 1 if reverse else k - 1
            s = scale[b, k]
            for p in range(lo, hi):
                lam_bar, gamma = _discretize(lam[p], inv_lam[p], delta[p] * s, zoh)
                if resets[b, k]:
                    carried = 0j
                elif i == 0:
                    carried = lam_bar * init[b, p]
                else:
                    carried = lam_bar * out[b, prev, p]
                out[b, k, p] = carried + gamma * v[b, k, p]


@numba.njit(parallel=True, cache=True, nogil=True)
def _backward_kernel(lam, inv_lam, delta, scale, v, states, init, resets, reverse, zoh, splits, grad,
                     d_v, d_lam, d_delta, d_scale, d_init):  # pragma: no cover - compiled  # fmt: skip
    """d_lam (B, P) complex128 and d_delta (B, P) float64 zeros, one row per sequence;
    d_scale (splits, B, L) float64, one row per block of states; d_init (B, P)."""
    batch, length, size = v.shape
    width = (size + splits - 1) // splits
    for task in prange(batch * splits):
        b = task // splits
        split = task % splits
        lo = split * width
        hi = min(size, lo + width)
        carry = np.zeros(hi - lo, dtype=np.complex128)  # conj(Λ̄_{k+1}) g_{k+1}
        for i in range(length):
            k = i if reverse else length - 1 - i  # against the scan's direction
            prev = k + 1 if reverse else k - 1
            s = scale[b, k]
            reset = resets[b, k]
            d_s = 0.0
            for p in range(lo, hi):
                lam_p = lam[p]
                w = delta[p] * s
                lam_bar, gamma = _discretize(lam_p, inv_lam[p], w, zoh)
                g = grad[b, k, p] + carry[p - lo]
                d_v[b, k, p] = np.conj(gamma) * g
                d_gamma = g * np.conj(v[b, k, p])
                if reset:
                    d_lam_bar = 0j
                    carry[p - lo] = 0j
                else:
                    x_prev = init[b, p] if i == length - 1 else states[b, prev, p]
                    d_lam_bar = g * np.conj(x_prev)
                    carry[p - lo] = np.conj(lam_bar) * g
                if zoh:  # ∂Λ̄/∂Λ, ∂Λ̄/∂w, ∂γ/∂Λ, ∂γ/∂w
                    lb_lam, lb_w = w * lam_bar, lam_p * lam_bar
                    g_lam, g_w = (w * lam_bar - gamma) * inv_lam[p], lam_bar
                else:
                    inv = 1.0 / (1.0 - 0.5 * w * lam_p)
                    inv2 = inv * inv
                    lb_lam, lb_w = w * inv2, lam_p * inv2
                    g_lam, g_w = 0.5 * w * w * inv2, inv2
                d_lam[b, p] += np.conj(lb_lam) * d_lam_bar + np.conj(g_lam) * d_gamma
                d_w = (np.conj(lb_w) * d_lam_bar + np.conj(g_w) * d_gamma).real
                d_delta[b, p] += d_w * s
                d_s += d_w * delta[p]
            d_scale[split, b, k] = d_s
        for p in range(lo, hi):
            d_init[b, p] = carry[p - lo]


def _arrays(Lambda, delta, scale, v, initial_state):
    """Contiguous numpy views (and 1/Λ) for the kernels; a zero initial state if None."""
    lam = Lambda.detach().contiguous()
    init = initial_state if initial_state is not None else v.new_zeros(v.shape[0], v.shape[2])
    return (lam.numpy(), (1 / lam).numpy(), delta.detach().contiguous().numpy(),
            scale.detach().contiguous().numpy(), init.detach().contiguous())  # fmt: skip


def _forward_impl(Lambda, delta, scale, v, initial_state, resets, reverse: bool, zoh: bool) -> torch.Tensor:
    lam, inv_lam, dl, sc, init = _arrays(Lambda, delta, scale, v, initial_state)
    v = v.contiguous()
    out = torch.empty_like(v)
    batch, length, size = v.shape
    _forward_kernel(lam, inv_lam, dl, sc, v.numpy(), init.numpy(), _flags(resets, batch, length), reverse, zoh,
                    _splits(batch, size), out.numpy())  # fmt: skip
    return out


def _backward_impl(Lambda, delta, scale, v, states, initial_state, resets, reverse: bool, zoh: bool, grad):
    lam, inv_lam, dl, sc, init = _arrays(Lambda, delta, scale, v, initial_state)
    batch, length, size = v.shape
    splits = _splits(batch, size)
    d_v = torch.empty_like(v)
    d_lam = np.zeros((batch, size), dtype=np.complex128)
    d_delta = np.zeros((batch, size), dtype=np.float64)
    d_scale = np.zeros((splits, batch, length), dtype=np.float64)
    d_init = torch.empty_like(init)
    _backward_kernel(
        lam, inv_lam, dl, sc, v.contiguous().numpy(), states.contiguous().numpy(), init.numpy(),
        _flags(resets, batch, length), reverse, zoh, splits, grad.contiguous().numpy(),
        d_v.numpy(), d_lam, d_delta, d_scale, d_init.numpy(),
    )  # fmt: skip
    return (
        torch.from_numpy(d_lam.sum(axis=0)).to(Lambda.dtype),
        torch.from_numpy(d_delta.sum(axis=0)).to(delta.dtype),
        torch.from_numpy(d_scale.sum(axis=0)).to(scale.dtype),
        d_v,
        d_init,
    )


if hasattr(torch.library, "custom_op"):  # torch >= 2.4: opaque ops for torch.compile

    @torch.library.custom_op("s5ssm::irregular_scan_forward", mutates_args=())
    def _forward_op(
        Lambda: torch.Tensor,
        delta: torch.Tensor,
        scale: torch.Tensor,
        v: torch.Tensor,
        initial_state: torch.Tensor | None,
        resets: torch.Tensor | None,
        reverse: bool,
        zoh: bool,
    ) -> torch.Tensor:
        return _forward_impl(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)

    @_forward_op.register_fake
    def _(Lambda, delta, scale, v, initial_state, resets, reverse, zoh):
        return torch.empty_like(v)

    @torch.library.custom_op("s5ssm::irregular_scan_backward", mutates_args=())
    def _backward_op(
        Lambda: torch.Tensor,
        delta: torch.Tensor,
        scale: torch.Tensor,
        v: torch.Tensor,
        states: torch.Tensor,
        initial_state: torch.Tensor | None,
        resets: torch.Tensor | None,
        reverse: bool,
        zoh: bool,
        grad: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return _backward_impl(Lambda, delta, scale, v, states, initial_state, resets, reverse, zoh, grad)

    @_backward_op.register_fake
    def _(Lambda, delta, scale, v, states, initial_state, resets, reverse, zoh, grad):
        batch, _, size = v.shape
        return (torch.empty_like(Lambda), torch.empty_like(delta), torch.empty_like(scale), torch.empty_like(v),
                v.new_empty(batch, size))  # fmt: skip

else:  # pragma: no cover - torch 2.3: plain functions (eager autograd still works)
    _forward_op, _backward_op = _forward_impl, _backward_impl


class _IrregularScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, Lambda, delta, scale, v, initial_state, resets, reverse, zoh):
        states = _forward_op(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)
        ctx.save_for_backward(Lambda, delta, scale, v, states, initial_state, resets)
        ctx.reverse, ctx.zoh = reverse, zoh
        return states

    @staticmethod
    def backward(ctx, grad):
        Lambda, delta, scale, v, states, initial_state, resets = ctx.saved_tensors
        d_lam, d_delta, d_scale, d_v, d_init = _backward_op(
            Lambda, delta, scale, v, states, initial_state, resets, ctx.reverse, ctx.zoh, grad
        )
        return d_lam, d_delta, d_scale, d_v, d_init if initial_state is not None else None, None, None, None


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

    Args:
        Lambda: complex (P,) continuous eigenvalues.
        delta: real (P,) steps Δ (exp(log_step) · step_rescale).
        scale: real (B, L) step_scale per step (0 at a step to skip).
        v: complex (B, L, P) B~u, before discretisation.
        method: "zoh" or "bilinear".
        initial_state: complex (B, P) or None; resets: bool (B, L) or None; reverse: bool.

    Returns:
        complex (B, L, P) states; equal to discretize + linear_scan on the same inputs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if v.device.type != "cpu":
        raise ValueError(f"irregular_scan runs on CPU tensors, got v on {v.device}")
    real = v.real.dtype
    delta, scale = delta.to(real), scale.to(real)
    zoh = method == "zoh"
    inputs = (Lambda, delta, scale, v, initial_state)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _IrregularScan.apply(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)
    return _forward_op(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)
