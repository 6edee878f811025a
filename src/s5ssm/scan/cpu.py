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
fewer sequences than threads); the inner loop runs over contiguous states. With torch.library.custom_op (torch >= 2.4) both kernels
are registered as ops, so torch.compile'd code calls them instead of tracing into numba.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange



@numba.njit(parallel=True, cache=True, nogil=True)
def _forward_kernel(lam, bu, init, resets, reverse, splits, out):  # pragma: no cover - compiled
    batch, length, size = bu.shape
    lam_b = 1 if lam.shape[0] > 1 else 0  # integer selectors keep numba's index types integral
    lam_l = 1 if lam.shape[1] > 1 else 0
    width = (size + splits - 1) // splits
    for task in prange(batch * splits):
        b = task // splits
        lo = (task % splits) * width
        hi = min(size, lo + width)
        for i in range(length):
            k = length - 1 - i if reverse else i
            prev = k + 1 if reverse else k - 1
            a = lam_l * k
            if resets[b, k]:
                for p in range(lo, hi):
                    out[b, k, p] = bu[b, k, p]
            elif i == 0:
                for p in range(lo, hi):
                    out[b, k, p] = lam[lam_b * b, a, p] * init[b, p] + bu[b, k, p]
            else:
                for p in range(lo, hi):
                    out[b, k, p] = lam[lam_b * b, a, p] * out[b, prev, p] + bu[b, k, p]


@numba.njit(parallel=True, cache=True, nogil=True)
def _backward_kernel(lam, states, init, resets, reverse, splits, grad, d_bu, d_lam, d_init):  # pragma: no cover
    """d_lam: (B, 1|L, P) zeros, one row per sequence; d_init: (B, P)."""
    batch, length, size = states.shape
    lam_b = 1 if lam.shape[0] > 1 else 0
    lam_l = 1 if lam.shape[1] > 1 else 0
    width = (size + splits - 1) // splits
    for task in prange(batch * splits):
        b = task // splits
        lo = (task % splits) * width
        hi = min(size, lo + width)
        carry = np.zeros(hi - lo, dtype=states.dtype)  # conj(Λ̄_{k+1}) g_{k+1}
        for i in range(length):
            k = i if reverse else length - 1 - i  # against the scan's direction
            prev = k + 1 if reverse else k - 1
            a = lam_l * k
            if resets[b, k]:
                for p in range(lo, hi):
                    d_bu[b, k, p] = grad[b, k, p] + carry[p - lo]
                    carry[p - lo] = 0
                continue
            x_prev = init[b] if i == length - 1 else states[b, prev]
            lam_k = lam[lam_b * b, a]
            row = d_lam[b, a]
            for p in range(lo, hi):
                g = grad[b, k, p] + carry[p - lo]
                d_bu[b, k, p] = g
                row[p] += g * np.conj(x_prev[p])
                carry[p - lo] = np.conj(lam_k[p]) * g
        for p in range(lo, hi):
            d_init[b, p] = carry[p - lo]


def _splits(batch: int, size: int) -> int:
    """State blocks per sequence: enough tasks for every thread, blocks of >= 16 states."""
    threads = numba.get_num_threads()
    return max(1, min(size // 16, -(-threads // batch)))


def _layout(lambda_bar: torch.Tensor) -> torch.Tensor:
    return lambda_bar.reshape(1, 1, -1) if lambda_bar.dim() == 1 else lambda_bar


def _flags(resets: torch.Tensor | None, batch: int, length: int) -> np.ndarray:
    if resets is None:
        return np.zeros((batch, length), dtype=np.bool_)
    return resets.contiguous().numpy()


def _forward_impl(lambda_bar, bu, initial_state, resets, reverse: bool, in_place: bool = False) -> torch.Tensor:
    """The states (B, L, P); in_place: written over `bu` (contiguous, owned by the caller)."""
    lam = _layout(lambda_bar).contiguous()
    bu = bu if in_place else bu.contiguous()
    init = initial_state.contiguous() if initial_state is not None else bu.new_zeros(bu.shape[0], bu.shape[2])
    out = bu if in_place else torch.empty_like(bu)
    batch, length, size = bu.shape
    flags = _flags(resets, batch, length)
    _forward_kernel(lam.numpy(), bu.numpy(), init.numpy(), flags, reverse, _splits(batch, size), out.numpy())
    return out


def _backward_impl(lambda_bar, states, initial_state, resets, reverse: bool, grad, in_place: bool = False):
    """(d Λ̄, d bu, d initial_state); in_place: d bu is written over `grad` (contiguous, owned by the caller)."""
    lam = _layout(lambda_bar).contiguous()
    batch, length, size = states.shape
    init = initial_state.contiguous() if initial_state is not None else states.new_zeros(batch, size)
    d_bu = grad if in_place else torch.empty_like(states)
    d_lam = states.new_zeros(batch, lam.shape[1], size)
    d_init = torch.empty_like(init)
    _backward_kernel(
        lam.numpy(), states.contiguous().numpy(), init.numpy(), _flags(resets, batch, length),
        reverse, _splits(batch, size), grad.contiguous().numpy(), d_bu.numpy(), d_lam.numpy(), d_init.numpy(),
    )  # fmt: skip
    if lam.shape[0] == 1:
        d_lam = d_lam.sum(dim=0, keepdim=True)
    return d_lam.reshape(lambda_bar.shape), d_bu, d_init


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
        return torch.empty_like(bu)

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
        return torch.empty_like(lambda_bar), torch.empty_like(states), states.new_empty(batch, size)

else:  # pragma: no cover - torch 2.3: plain functions (eager autograd still works)
    _forward_op, _backward_op = _forward_impl, _backward_impl


class _Scan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lambda_bar, bu, initial_state, resets, reverse):
        states = _forward_op(lambda_bar, bu, initial_state, resets, reverse)
        ctx.save_for_backward(lambda_bar, states, initial_state, resets)
        ctx.reverse = reverse
        return states

    @staticmethod
    def backward(ctx, grad):
        lambda_bar, states, initial_state, resets = ctx.saved_tensors
        d_lam, d_bu, d_init = _backward_op(lambda_bar, states, initial_state, resets, ctx.reverse, grad)
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
        return _forward_op(lambda_bar, bu, initial_state, resets, reverse)
    return _Scan.apply(lambda_bar, bu, initial_state, resets, reverse)
