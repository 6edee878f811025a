"""Triton scan with the discretisation fused in, for a step_scale that varies per step.

The GPU counterpart of scan/irregular.py (read there for the math and the gradient
convention): with w = Δ_p s_{b,k},

    zoh:       Λ̄ = exp(Λw),                  γ = expm1(Λw) / Λ
    bilinear:  Λ̄ = (1 + Λw/2) / (1 - Λw/2),  γ = w / (1 - Λw/2)
    x_k = Λ̄_k x_{k-1} + γ_k v_k,             v = B~u  (B, L, P)

Λ̄ and γ are computed per tile inside the kernels from Λ, Δ (P,) and s (B, L), never
stored: the forward reads v once and writes the states (the chunked scan of
triton_chunks.py); the backward is the chunked reverse scan of the adjoint, its transition
conj(Λ̄) of the scan's next step recomputed from that step's s, and reduces in the kernel
the sums that give dΛ and dΔ (per chunk, (B, chunks, 3, P), finished by
irregular.finalize) and ds (per block of states, (blocks, B, L)). Only v and the states
are saved for backward: O(B·L·P) memory, as for a scalar step.

The discretisation runs in the data's precision (float32 for complex64). expm1 of the
real part uses Kahan's formula (u - 1)·x / log u, u = exp x, for |x| < 1/2, which stays
accurate when exp is the GPU's approximate one; cos y - 1 is -2 sin²(y/2), so
expm1(Λw) has no cancellation near w = 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bridge import KernelOp, differentiable
from .irregular import (BACKWARD_SCHEMA, FORWARD_SCHEMA, METHODS, backward_fake, backward_inputs, check_inputs,
                        finalize, forward_fake)
from .triton_chunks import (Grid, cmul, device, flags, floats, initial, last_row, load_complex, runs_on, scan_tile,
                            store_complex, tile)


@device
def _expm1(x, e):
    """expm1(x) given e = exp(x) (module docstring)."""
    small = tl.abs(x) < 0.5
    log_e = tl.log(tl.where(small & (e != 1.0), e, 2.0))
    return tl.where(small, tl.where(e == 1.0, x, (e - 1.0) * x / log_e), e - 1.0)


@device
def _discretize(lam_re, lam_im, inv_re, inv_im, delta, s, ZOH: tl.constexpr):
    """(Λ̄, γ) as (re, im) tiles (BLOCK_L, BLOCK_P) for w = Δ s: Λ, 1/Λ (re, im) and Δ are
    (BLOCK_P,), s is (BLOCK_L,)."""
    w = s[:, None] * delta[None, :]
    if ZOH:
        x = lam_re[None, :] * w
        y = lam_im[None, :] * w
        e = tl.exp(x)
        sin_h = tl.sin(0.5 * y)
        cos_h = tl.cos(0.5 * y)
        versine = 2.0 * sin_h * sin_h  # 1 - cos y
        sin_y = 2.0 * sin_h * cos_h
        bar_re, bar_im = e * (1.0 - versine), e * sin_y
        gamma_re, gamma_im = cmul(_expm1(x, e) * (1.0 - versine) - versine, e * sin_y, inv_re[None, :], inv_im[None, :])
    else:
        d_re = 1.0 - 0.5 * w * lam_re[None, :]  # 1 - Λw/2
        d_im = -0.5 * w * lam_im[None, :]
        norm = 1.0 / (d_re * d_re + d_im * d_im)
        gamma_re, gamma_im = w * d_re * norm, -w * d_im * norm  # w / (1 - Λw/2)
        bar_re, bar_im = cmul(2.0 - d_re, -d_im, d_re * norm, -d_im * norm)
    return bar_re, bar_im, gamma_re, gamma_im


@device
def _parameters(lam_ptr, inv_ptr, delta_ptr, p, cols_ok):
    """Λ, 1/Λ (re, im) and Δ at states p, each (BLOCK_P,)."""
    lam_re, lam_im = load_complex(lam_ptr, p, cols_ok)
    inv_re, inv_im = load_complex(inv_ptr, p, cols_ok)
    return lam_re, lam_im, inv_re, inv_im, tl.load(delta_ptr + p, mask=cols_ok, other=0.0)


@device
def _store_column_sums(ptr, offsets, re, im, mask, cols_ok):
    """Write the sums over the valid rows of a tile (re, im) to the complex elements at
    `offsets` (BLOCK_P,) of interleaved floats `ptr`."""
    sum_re = tl.sum(tl.where(mask, re, 0.0), axis=0)
    store_complex(ptr, offsets, sum_re, tl.sum(tl.where(mask, im, 0.0), axis=0), cols_ok)


@triton.jit
def _forward_kernel(lam_ptr, inv_ptr, delta_ptr, scale_ptr, v_ptr, init_ptr, resets_ptr, out_ptr, status_ptr, data_ptr,
                    L, P, lanes, chunks, REVERSE: tl.constexpr, HAS_RESETS: tl.constexpr, ZOH: tl.constexpr,
                    PUBLISH_PREFIX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """out (B, L, P): the states; floats as in triton_chunks.py, scale (B, L), resets as bytes."""
    lane, chunk, b, p, k, rows, rows_ok, cols_ok = tile(status_ptr, lanes, chunks, L, P, REVERSE, BLOCK_L, BLOCK_P)
    mask = rows_ok[:, None] & cols_ok[None, :]
    offsets = (b * L + k)[:, None] * P + p[None, :]
    lam_re, lam_im, inv_re, inv_im, delta = _parameters(lam_ptr, inv_ptr, delta_ptr, p, cols_ok)
    s = tl.load(scale_ptr + b * L + k, mask=rows_ok, other=0.0)
    a_re, a_im, gamma_re, gamma_im = _discretize(lam_re, lam_im, inv_re, inv_im, delta, s, ZOH)
    if HAS_RESETS:
        reset = tl.load(resets_ptr + b * L + k, mask=rows_ok, other=0) != 0
        a_re = tl.where(reset[:, None], 0.0, a_re)
        a_im = tl.where(reset[:, None], 0.0, a_im)
    v_re, v_im = load_complex(v_ptr, offsets, mask)
    u_re, u_im = cmul(gamma_re, gamma_im, v_re, v_im)
    x0_re, x0_im = load_complex(init_ptr, b * P + p, cols_ok)
    x_re, x_im = scan_tile(a_re, a_im, u_re, u_im, rows, status_ptr, data_ptr, lane, chunk, chunks, x0_re, x0_im,
                           PUBLISH_PREFIX, BLOCK_P)  # fmt: skip
    store_complex(out_ptr, offsets, x_re, x_im, mask)


@triton.jit
def _backward_kernel(lam_ptr, inv_ptr, delta_ptr, scale_ptr, v_ptr, states_ptr, init_ptr, resets_ptr, grad_ptr,
                     d_v_ptr, acc_ptr, d_scale_ptr, d_init_ptr, status_ptr, data_ptr, B, L, P, lanes, chunks,
                     REVERSE: tl.constexpr, HAS_RESETS: tl.constexpr, ZOH: tl.constexpr,
                     PUBLISH_PREFIX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """The adjoint, against the scan's direction: d_v (B, L, P); acc (B, chunks, 3, P) the
    chunk sums of irregular._adjoint_sums_row; d_scale (blocks, B, L) per block of states;
    d_init (B, P)."""
    lane, chunk, b, p, k, rows, rows_ok, cols_ok = tile(status_ptr, lanes, chunks, L, P, not REVERSE, BLOCK_L,
                                                        BLOCK_P)  # fmt: skip
    after = -1 if REVERSE else 1  # k + after: the scan's next step, k - after: its previous one
    mask = rows_ok[:, None] & cols_ok[None, :]
    offsets = (b * L + k)[:, None] * P + p[None, :]
    lam_re, lam_im, inv_re, inv_im, delta = _parameters(lam_ptr, inv_ptr, delta_ptr, p, cols_ok)
    # the adjoint's transition into step k: conj(Λ̄) of the scan's next step, 0 at a reset there
    has_next = rows_ok & (k + after >= 0) & (k + after < L)
    s_next = tl.load(scale_ptr + b * L + k + after, mask=has_next, other=0.0)
    a_re, a_im, _, _ = _discretize(lam_re, lam_im, inv_re, inv_im, delta, s_next, ZOH)
    a_im = -a_im
    if HAS_RESETS:
        reset_next = tl.load(resets_ptr + b * L + k + after, mask=has_next, other=0) != 0
        a_re = tl.where(reset_next[:, None], 0.0, a_re)
        a_im = tl.where(reset_next[:, None], 0.0, a_im)
    dx_re, dx_im = load_complex(grad_ptr, offsets, mask)
    zero = tl.zeros((BLOCK_P,), dx_re.dtype)
    g_re, g_im = scan_tile(a_re, a_im, dx_re, dx_im, rows, status_ptr, data_ptr, lane, chunk, chunks, zero, zero,
                           PUBLISH_PREFIX, BLOCK_P)  # fmt: skip
    s = tl.load(scale_ptr + b * L + k, mask=rows_ok, other=0.0)
    bar_re, bar_im, gamma_re, gamma_im = _discretize(lam_re, lam_im, inv_re, inv_im, delta, s, ZOH)
    dv_re, dv_im = cmul(gamma_re, -gamma_im, g_re, g_im)
    store_complex(d_v_ptr, offsets, dv_re, dv_im, mask)
    # the state before step k: the initial state at the scan's first step, 0 at a reset
    first = (k - after < 0) | (k - after >= L)
    prev_re, prev_im = load_complex(states_ptr, offsets - after * P, mask & ~first[:, None])
    x0_re, x0_im = load_complex(init_ptr, b * P + p, cols_ok)
    prev_re = tl.where(first[:, None], x0_re[None, :], prev_re)
    prev_im = tl.where(first[:, None], x0_im[None, :], prev_im)
    if HAS_RESETS:
        reset = tl.load(resets_ptr + b * L + k, mask=rows_ok, other=0) != 0
        prev_re = tl.where(reset[:, None], 0.0, prev_re)
        prev_im = tl.where(reset[:, None], 0.0, prev_im)
    v_re, v_im = load_complex(v_ptr, offsets, mask)
    c_re, c_im = cmul(bar_re, -bar_im, g_re, g_im)  # conj(Λ̄_k) g_k: the carry into the step before
    # q: the new carry for ZOH, conj(inv²) g for bilinear (irregular._adjoint_sums_row)
    if ZOH:
        q_re, q_im = c_re, c_im
    else:
        inv2_re, inv2_im = cmul(0.5 * (bar_re + 1.0), 0.5 * bar_im, 0.5 * (bar_re + 1.0), 0.5 * bar_im)
        q_re, q_im = cmul(inv2_re, -inv2_im, g_re, g_im)
    t1_re, t1_im = cmul(q_re, q_im, prev_re, -prev_im)
    t2_re, t2_im = cmul(q_re, q_im, v_re, -v_im)
    if ZOH:
        t3_re, t3_im = cmul(dv_re, dv_im, v_re, -v_im)
    else:
        t3_re, t3_im = 0.5 * s[:, None] * s[:, None] * t2_re, 0.5 * s[:, None] * s[:, None] * t2_im
    sums = (b * chunks + chunk) * 3 * P + p  # acc[b, chunk, 0, p]
    _store_column_sums(acc_ptr, sums, s[:, None] * t1_re, s[:, None] * t1_im, mask, cols_ok)
    _store_column_sums(acc_ptr, sums + P, s[:, None] * t2_re, s[:, None] * t2_im, mask, cols_ok)
    _store_column_sums(acc_ptr, sums + 2 * P, t3_re, t3_im, mask, cols_ok)
    # ds_k = Σ_p (Re(conj(Λ) t1) + Re(t2)) Δ, this block's share of the states
    d_s = (lam_re[None, :] * t1_re + lam_im[None, :] * t1_im + t2_re) * delta[None, :]
    blocks = tl.cdiv(P, BLOCK_P)
    tl.store(d_scale_ptr + ((lane % blocks) * B + b) * L + k, tl.sum(tl.where(mask, d_s, 0.0), axis=1), mask=rows_ok)
    if chunk == chunks - 1:  # this chunk holds the scan's first step, its last row
        d0_re, d0_im = last_row(c_re, rows), last_row(c_im, rows)
        if HAS_RESETS:
            reset0 = tl.load(resets_ptr + b * L + (L - 1 if REVERSE else 0)) != 0
            d0_re = tl.where(reset0, 0.0, d0_re)
            d0_im = tl.where(reset0, 0.0, d0_im)
        store_complex(d_init_ptr, b * P + p, d0_re, d0_im, cols_ok)


def _parameter_floats(Lambda: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Λ and 1/Λ (computed in complex128) as floats (P, 2) in v's precision."""
    lam = Lambda.detach().to(torch.complex128)
    return floats(lam.to(v.dtype)), floats((1 / lam).to(v.dtype))


def _forward_impl(Lambda, delta, scale, v, initial_state, resets, reverse: bool, zoh: bool) -> torch.Tensor:
    """The states, complex (B, L, P)."""
    batch, length, size = v.shape
    grid = Grid(batch, length, size, v.real.dtype, v.device)
    lam, inv_lam = _parameter_floats(Lambda, v)
    out = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    _forward_kernel[grid.programs](
        lam, inv_lam, delta.detach().contiguous(), scale.detach().contiguous(), floats(v), initial(initial_state, v),
        flags(resets, grid.status), torch.view_as_real(out), grid.status, grid.data, length, size, grid.lanes,
        grid.chunks, REVERSE=reverse, HAS_RESETS=resets is not None, ZOH=zoh, **grid.options,
    )  # fmt: skip
    return out


def _backward_impl(Lambda, delta, scale, v, states, initial_state, resets, reverse: bool, zoh: bool, grad):
    """(dΛ (P,), dΔ (P,), d scale (B, L), d v (B, L, P), d initial_state (B, P))."""
    batch, length, size = v.shape
    grid = Grid(batch, length, size, v.real.dtype, v.device)
    lam, inv_lam = _parameter_floats(Lambda, v)
    d_v = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    acc = v.new_empty(batch, grid.chunks, 3, size)
    d_scale = scale.new_empty(triton.cdiv(size, grid.block_p), batch, length)
    d_init = v.new_empty(batch, size)
    _backward_kernel[grid.programs](
        lam, inv_lam, delta.detach().contiguous(), scale.detach().contiguous(), floats(v), floats(states),
        initial(initial_state, v), flags(resets, grid.status), floats(grad), torch.view_as_real(d_v),
        torch.view_as_real(acc), d_scale, torch.view_as_real(d_init), grid.status, grid.data, batch, length, size,
        grid.lanes, grid.chunks, REVERSE=reverse, HAS_RESETS=resets is not None, ZOH=zoh, **grid.options,
    )  # fmt: skip
    d_lam, d_delta = finalize(acc.to(torch.complex128).sum(dim=(0, 1)), Lambda, delta, zoh)
    return d_lam, d_delta, d_scale.sum(dim=0), d_v, d_init


_irregular_scan = differentiable(
    KernelOp("triton_irregular_scan_forward", _forward_impl, FORWARD_SCHEMA, forward_fake),
    KernelOp("triton_irregular_scan_backward", _backward_impl, BACKWARD_SCHEMA, backward_fake), backward_inputs,
)


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
    """States of x_k = Λ̄(Δ s_k) x_{k-1} + γ(Δ s_k) v_k; the arguments, result and gradients
    of scan.irregular.irregular_scan, on CUDA tensors (CPU tensors in Triton's interpreter)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_inputs(Lambda, delta, scale, v, initial_state, resets)
    if not runs_on(v.device):
        raise ValueError(f"v is on {v.device}: the triton irregular_scan runs on CUDA tensors (on CPU tensors only "
                         "in Triton's interpreter, TRITON_INTERPRET=1)")  # fmt: skip
    real = v.real.dtype
    delta, scale = delta.to(real), scale.to(real)
    zoh = method == "zoh"
    return _irregular_scan(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)
