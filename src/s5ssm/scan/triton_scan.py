"""Triton linear scan: the forward, and a backward that is the reverse scan of the adjoint.

Same signature and result as `reference.scan`:

    lambda_bar     complex64/128 (P,), (1|B, 1, P) or (1|B, L, P)
    bu             complex (B, L, P)
    initial_state  complex (B, P) or None
    reverse        bool
    resets         bool (B, L) or None
    returns        complex (B, L, P) states

Forward: x_k = Λ̄_k x_{k-1} + bu_k (0 in place of x_{k-1} at a reset), as the chunked scan
of triton_chunks.py: each program reads its tile of bu once, writes its states once.
Backward (as scan/cpu.py), for the forward direction:

    g_k = dx_k + conj(Λ̄_{k+1}) g_{k+1}      (0 across a reset at k+1)
    d bu_k = g_k,   d Λ̄_k = g_k conj(x_{k-1}) (0 at a reset),   d x_{-1} = conj(Λ̄_0) g_0

mirrored for reverse: a chunked scan in the opposite direction whose transition at step k
is conj(Λ̄) of the step after it. d Λ̄ is reduced in the kernel: over each chunk's steps
for a Λ̄ without a time axis (a (B, chunks, P) partial, summed afterwards), one row per
step for a time-varying one; the sum over the batch of a shared Λ̄ follows. Only the
inputs and the states are saved for backward; the look-back's workspace is O(B·P·L/BLOCK_L).

Both kernels are registered as torch custom ops (s5ssm::triton_scan_forward/_backward) so
that torch.compile calls them instead of tracing into Triton; eager code calls the
functions directly.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .bridge import KernelOp, differentiable
from .cpu import BACKWARD_SCHEMA, FORWARD_SCHEMA, backward_fake, backward_inputs, forward_fake
from .triton_chunks import (Grid, cmul, device, flags, floats, initial, last_row, load_complex, scan_tile,
                            store_complex, tile)

@device
def _lambda_tile(lam_ptr, lam_sb, lam_sl, b, k, p, rows_ok, cols_ok, PER_STEP: tl.constexpr, BLOCK_L: tl.constexpr,
                 BLOCK_P: tl.constexpr):
    """Λ̄ at steps k (BLOCK_L,) and states p (BLOCK_P,) as a tile (re, im), 0 where not
    valid; lam_sb, lam_sl: Λ̄'s strides over (B, L) in complex elements (0 if broadcast)."""
    if PER_STEP:
        re, im = load_complex(lam_ptr, (b * lam_sb + k * lam_sl)[:, None] + p[None, :],
                              rows_ok[:, None] & cols_ok[None, :])  # fmt: skip
    else:
        row_re, row_im = load_complex(lam_ptr, b * lam_sb + p, cols_ok)
        re = tl.broadcast_to(row_re[None, :], (BLOCK_L, BLOCK_P))
        im = tl.broadcast_to(row_im[None, :], (BLOCK_L, BLOCK_P))
    return re, im


@triton.jit
def _forward_kernel(lam_ptr, bu_ptr, init_ptr, resets_ptr, out_ptr, status_ptr, data_ptr, L, P, lam_sb, lam_sl,
                    lanes, chunks, REVERSE: tl.constexpr, HAS_RESETS: tl.constexpr, PER_STEP: tl.constexpr,
                    PUBLISH_PREFIX: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr):  # fmt: skip
    """out (B, L, P): the states; floats as in triton_chunks.py, resets as bytes (B, L)."""
    lane, chunk, b, p, k, rows, rows_ok, cols_ok = tile(status_ptr, lanes, chunks, L, P, REVERSE, BLOCK_L, BLOCK_P)
    mask = rows_ok[:, None] & cols_ok[None, :]
    offsets = (b * L + k)[:, None] * P + p[None, :]
    bu_re, bu_im = load_complex(bu_ptr, offsets, mask)
    a_re, a_im = _lambda_tile(lam_ptr, lam_sb, lam_sl, b, k, p, rows_ok, cols_ok, PER_STEP, BLOCK_L, BLOCK_P)
    if HAS_RESETS:
        reset = tl.load(resets_ptr + b * L + k, mask=rows_ok, other=0) != 0
        a_re = tl.where(reset[:, None], 0.0, a_re)
        a_im = tl.where(reset[:, None], 0.0, a_im)
    x0_re, x0_im = load_complex(init_ptr, b * P + p, cols_ok)
    x_re, x_im = scan_tile(a_re, a_im, bu_re, bu_im, rows, status_ptr, data_ptr, lane, chunk, chunks, x0_re, x0_im,
                           PUBLISH_PREFIX, BLOCK_P)  # fmt: skip
    store_complex(out_ptr, offsets, x_re, x_im, mask)


@triton.jit
def _backward_kernel(lam_ptr, states_ptr, init_ptr, resets_ptr, grad_ptr, d_bu_ptr, d_lam_ptr, d_init_ptr, status_ptr,
                     data_ptr, L, P, lam_sb, lam_sl, lanes, chunks, REVERSE: tl.constexpr, HAS_RESETS: tl.constexpr,
                     PER_STEP: tl.constexpr, PUBLISH_PREFIX: tl.constexpr, BLOCK_L: tl.constexpr,
                     BLOCK_P: tl.constexpr):  # fmt: skip
    """The adjoint (module docstring), run against the scan's direction. d_bu (B, L, P);
    d_lam (B, L, P) when PER_STEP, else (B, chunks, P) sums over each chunk's steps;
    d_init (B, P)."""
    lane, chunk, b, p, k, rows, rows_ok, cols_ok = tile(status_ptr, lanes, chunks, L, P, not REVERSE, BLOCK_L,
                                                        BLOCK_P)  # fmt: skip
    after = -1 if REVERSE else 1  # k + after: the scan's next step, k - after: its previous one
    mask = rows_ok[:, None] & cols_ok[None, :]
    offsets = (b * L + k)[:, None] * P + p[None, :]
    dx_re, dx_im = load_complex(grad_ptr, offsets, mask)
    # the transition into step k of the adjoint: conj(Λ̄) of the scan's next step, 0 at a
    # reset there; none for the scan's last step (the adjoint's first: nothing carried in)
    has_next = rows_ok & (k + after >= 0) & (k + after < L)
    a_re, a_im = _lambda_tile(lam_ptr, lam_sb, lam_sl, b, k + after, p, has_next, cols_ok, PER_STEP, BLOCK_L, BLOCK_P)
    a_im = -a_im
    if HAS_RESETS:
        reset_next = tl.load(resets_ptr + b * L + k + after, mask=has_next, other=0) != 0
        a_re = tl.where(reset_next[:, None], 0.0, a_re)
        a_im = tl.where(reset_next[:, None], 0.0, a_im)
    zero = tl.zeros((BLOCK_P,), dx_re.dtype)
    g_re, g_im = scan_tile(a_re, a_im, dx_re, dx_im, rows, status_ptr, data_ptr, lane, chunk, chunks, zero, zero,
                           PUBLISH_PREFIX, BLOCK_P)  # fmt: skip
    store_complex(d_bu_ptr, offsets, g_re, g_im, mask)
    # d Λ̄_k = g_k conj(x_prev): the state before step k, the initial state at the first step
    first = (k - after < 0) | (k - after >= L)
    prev_re, prev_im = load_complex(states_ptr, offsets - after * P, mask & ~first[:, None])
    x0_re, x0_im = load_complex(init_ptr, b * P + p, cols_ok)
    prev_re = tl.where(first[:, None], x0_re[None, :], prev_re)
    prev_im = tl.where(first[:, None], x0_im[None, :], prev_im)
    if HAS_RESETS:
        reset = tl.load(resets_ptr + b * L + k, mask=rows_ok, other=0) != 0
        prev_re = tl.where(reset[:, None], 0.0, prev_re)
        prev_im = tl.where(reset[:, None], 0.0, prev_im)
    d_re, d_im = cmul(g_re, g_im, prev_re, -prev_im)
    if PER_STEP:
        store_complex(d_lam_ptr, offsets, d_re, d_im, mask)
    else:
        sum_re = tl.sum(tl.where(mask, d_re, 0.0), axis=0)
        sum_im = tl.sum(tl.where(mask, d_im, 0.0), axis=0)
        store_complex(d_lam_ptr, (b * chunks + chunk) * P + p, sum_re, sum_im, cols_ok)
    if chunk == chunks - 1:  # this chunk holds the scan's first step, its last row
        k0 = L - 1 if REVERSE else 0
        l0_re, l0_im = load_complex(lam_ptr, b * lam_sb + k0 * lam_sl + p, cols_ok)
        d0_re, d0_im = cmul(l0_re, -l0_im, last_row(g_re, rows), last_row(g_im, rows))
        if HAS_RESETS:
            reset0 = tl.load(resets_ptr + b * L + k0) != 0
            d0_re = tl.where(reset0, 0.0, d0_re)
            d0_im = tl.where(reset0, 0.0, d0_im)
        store_complex(d_init_ptr, b * P + p, d0_re, d0_im, cols_ok)


def _lambda_layout(lambda_bar: torch.Tensor) -> tuple[torch.Tensor, int, int, bool]:
    """(Λ̄ as floats (1|B, 1|L, P, 2), its batch and step strides in complex elements (0 if
    broadcast), whether it has a time axis)."""
    lam = lambda_bar.reshape(1, 1, -1) if lambda_bar.dim() == 1 else lambda_bar
    _, steps, size = lam.shape
    return floats(lam), (steps * size if lam.shape[0] > 1 else 0), (size if steps > 1 else 0), steps > 1


def _forward_impl(lambda_bar, bu, initial_state, resets, reverse: bool) -> torch.Tensor:
    """The states, complex (B, L, P)."""
    batch, length, size = bu.shape
    grid = Grid(batch, length, size, bu.real.dtype, bu.device)
    lam, lam_sb, lam_sl, per_step = _lambda_layout(lambda_bar)
    out = torch.empty(bu.shape, dtype=bu.dtype, device=bu.device)
    _forward_kernel[grid.programs](
        lam, floats(bu), initial(initial_state, bu), flags(resets, grid.status), torch.view_as_real(out), grid.status,
        grid.data, length, size, lam_sb, lam_sl, grid.lanes, grid.chunks, REVERSE=reverse,
        HAS_RESETS=resets is not None, PER_STEP=per_step, **grid.options,
    )  # fmt: skip
    return out


def _backward_impl(lambda_bar, states, initial_state, resets, reverse: bool, grad):
    """(d Λ̄ of Λ̄'s shape, d bu (B, L, P), d initial_state (B, P))."""
    batch, length, size = states.shape
    grid = Grid(batch, length, size, states.real.dtype, states.device)
    lam, lam_sb, lam_sl, per_step = _lambda_layout(lambda_bar)
    d_bu = torch.empty(states.shape, dtype=states.dtype, device=states.device)
    d_lam = states.new_empty(batch, length if per_step else grid.chunks, size)
    d_init = states.new_empty(batch, size)
    _backward_kernel[grid.programs](
        lam, floats(states), initial(initial_state, states), flags(resets, grid.status), floats(grad),
        torch.view_as_real(d_bu), torch.view_as_real(d_lam), torch.view_as_real(d_init), grid.status, grid.data,
        length, size, lam_sb, lam_sl, grid.lanes, grid.chunks, REVERSE=reverse, HAS_RESETS=resets is not None,
        PER_STEP=per_step, **grid.options,
    )  # fmt: skip
    if not per_step:  # the chunks' partial sums
        d_lam = d_lam.to(torch.complex128).sum(dim=1, keepdim=True).to(states.dtype)
    if lambda_bar.dim() == 1 or lambda_bar.shape[0] == 1:  # shared by the batch
        d_lam = d_lam.sum(dim=0, keepdim=True)
    return d_lam.reshape(lambda_bar.shape), d_bu, d_init


_scan = differentiable(
    KernelOp("triton_scan_forward", _forward_impl, FORWARD_SCHEMA, forward_fake),
    KernelOp("triton_scan_backward", _backward_impl, BACKWARD_SCHEMA, backward_fake), backward_inputs,
)


def scan(
    lambda_bar: torch.Tensor,
    bu: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton scan; same signature and result as `reference.scan` (module docstring)."""
    return _scan(lambda_bar, bu, initial_state, resets, reverse)
