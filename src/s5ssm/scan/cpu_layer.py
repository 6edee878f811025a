"""S5SSM's core on the CPU as one autograd Function, its buffers reused in place.

    y = Σ_directions Re(C~_d x_d) (·2 with conj_sym) + D ⊙ u,   x_d = scan_d(B̄u)

The "cpu" entry of core.CORES (core.fuses says when); reference: core.s5_core_reference,
and the same computation as separate ops (the input GEMM, cpu.scan or irregular_scan, the
output GEMMs: what core runs otherwise). Autograd cannot reuse a buffer across those ops;
one Function can:

    forward   B̄u is written by one GEMM; a time-invariant scan overwrites it with its
              states (the irregular scan keeps it: its backward needs B~u); y starts as
              D ⊙ u and each direction's output GEMM adds into it (beta = 1);
    backward  dx_d = grad_y C_d lands in a buffer of our own, and the reverse scan turns it
              into d(B̄u) in place; the GEMMs then give dB̄, du and dC from it. The D term
              takes one compiled pass over grad_y and u (_skip_backward: dD, and grad_y ⊙ D
              for du's GEMM to add into) instead of four elementwise ops.

A unidirectional layer's forward+backward peaks at 4 tensors of the states' size with a
scalar step_scale (5 with the separate ops) and 5 with a per-step one (6); `s5ssm bench`,
memory. Not covered (core takes the separate ops): a per-sequence step_scale (B,), the
final state (return_state), and torch.compile, which sees the separate registered ops.

Shapes: u real (B, L, H); w_in real (2P, H), rows interleaved (re, im): B̄ for
`Invariant`, B~ for `Irregular`; w_outs real (H, 2P) per direction; d real (H,);
initial_state complex (B, P) or None; resets, reverse_resets, padding bool (B, L) or None.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.nn.functional as F
from numba import prange

from . import cpu, irregular
from .bridge import as_array, output_like, writable

_SKIP_CHUNKS = 16  # row chunks of the D-term's backward (fixed: the sum's order does not depend on the threads)


class Invariant:
    """Λ̄ complex (P,), shared by every step (scan/cpu.py)."""

    keeps_input = False

    def __init__(self, lambda_bar: torch.Tensor) -> None:
        self.params = (lambda_bar,)

    @staticmethod
    def forward(params, bu, initial_state, resets, reverse, in_place):
        return cpu._forward_impl(params[0], bu, initial_state, resets, reverse, in_place)

    @staticmethod
    def backward(params, bu, states, initial_state, resets, reverse, grad):
        d_lam, d_bu, d_init = cpu._backward_impl(params[0], states, initial_state, resets, reverse, grad, True)
        return (d_lam,), d_bu, d_init


class Irregular:
    """Λ complex (P,), Δ real (P,) and step_scale real (B, L), discretised in the kernels
    (scan/irregular.py)."""

    keeps_input = True

    def __init__(self, Lambda: torch.Tensor, delta: torch.Tensor, scale: torch.Tensor, zoh: bool) -> None:
        real = Lambda.real.dtype
        self.params = (Lambda, delta.to(real), scale.to(real))
        self.zoh = zoh

    def forward(self, params, bu, initial_state, resets, reverse, in_place):
        return irregular._forward_impl(*params, bu, initial_state, resets, reverse, self.zoh)

    def backward(self, params, bu, states, initial_state, resets, reverse, grad):
        *d_params, d_bu, d_init = irregular._backward_impl(
            *params, bu, states, initial_state, resets, reverse, self.zoh, grad, in_place=True
        )
        return tuple(d_params), d_bu, d_init


def _complex(real: torch.Tensor) -> torch.Tensor:
    """Real (B, L, 2P) interleaved -> complex (B, L, P), sharing memory."""
    return torch.view_as_complex(real.unflatten(-1, (real.shape[-1] // 2, 2)))


def _real(states: torch.Tensor) -> torch.Tensor:
    """Complex (B, L, P) -> real (B, L, 2P) interleaved, sharing memory."""
    return torch.view_as_real(states).flatten(-2)


def _forward(scan, params, u, w_in, d, initial_state, resets, reverse_resets, padding, w_outs):
    """(y real (B, L, H), B̄u if the scan keeps it else None, states per direction)."""
    bu = F.linear(u, w_in)
    if padding is not None:
        bu.mul_(padding[..., None])
    bu = _complex(bu)
    two = len(w_outs) == 2
    states = [scan.forward(params, bu, initial_state, resets, False, in_place=not (two or scan.keeps_input))]
    if two:
        states.append(scan.forward(params, bu, None, reverse_resets, True, in_place=not scan.keeps_input))
    y = torch.empty(u.shape, dtype=u.dtype, device=u.device)
    torch.mul(u, d, out=y)  # D ⊙ u first: each GEMM then adds into y (beta = 1), no extra pass
    for w, x in zip(w_outs, states):
        y.flatten(0, 1).addmm_(_real(x).flatten(0, 1), w.t())
    return y, (bu if scan.keeps_input else None), states


@numba.njit(parallel=True, cache=True, nogil=True)
def _skip_backward_kernel(g, u, d, d_u, partial):  # pragma: no cover - compiled
    """g, u (N, H); d (H,); d_u (N, H) or (0, H); partial (chunks, H) float64 zeros.
    d_u = g ⊙ d (when it has rows) and partial[c] = Σ_{n in chunk c} g ⊙ u, in one read of g and u."""
    rows, width = g.shape
    chunks = partial.shape[0]
    per = (rows + chunks - 1) // chunks
    for c in prange(chunks):
        acc = partial[c]
        for n in range(c * per, min(rows, (c + 1) * per)):
            g_row, u_row = g[n], u[n]
            for h in range(width):
                acc[h] += g_row[h] * u_row[h]
            if d_u.shape[0] > 0:
                out = d_u[n]
                for h in range(width):
                    out[h] = g_row[h] * d[h]


def _skip_backward(grad_y: torch.Tensor, u: torch.Tensor, d: torch.Tensor, with_input: bool):
    """(d D real (H,), grad_y ⊙ D real (B, L, H) or None) for y = ... + D ⊙ u.
    Reference: ((grad_y * u).sum over (B, L), grad_y * d)."""
    d_u = output_like(grad_y) if with_input else grad_y.new_empty(0, grad_y.shape[-1])
    partial = np.zeros((_SKIP_CHUNKS, grad_y.shape[-1]))
    rows = lambda t: t.flatten(0, -2)  # noqa: E731
    _skip_backward_kernel(as_array(rows(grad_y)), as_array(rows(u)), as_array(d), writable(rows(d_u)), partial)
    d_d = torch.from_numpy(partial.sum(0)).to(d.dtype)
    return d_d, (d_u if with_input else None)


class _Core(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scan, n_params, u, w_in, d, initial_state, resets, reverse_resets, padding, *rest):
        params, w_outs = rest[:n_params], rest[n_params:]
        y, bu, states = _forward(scan, params, u, w_in, d, initial_state, resets, reverse_resets, padding, w_outs)
        ctx.scan, ctx.n_params, ctx.directions = scan, n_params, len(w_outs)
        ctx.save_for_backward(u, w_in, d, initial_state, resets, reverse_resets, padding, bu, *rest, *states)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, w_in, d, initial_state, resets, reverse_resets, padding, bu, *rest = ctx.saved_tensors
        n, directions = ctx.n_params, ctx.directions
        params, w_outs, states = rest[:n], rest[n : n + directions], rest[n + directions :]
        grad_y = grad_y.contiguous()
        rows = grad_y.flatten(0, 1)  # (B·L, H)
        d_params, d_init, d_bu, d_w_outs = None, None, None, []
        for direction, (w, x) in enumerate(zip(w_outs, states)):
            d_w_outs.append(rows.t() @ _real(x).flatten(0, 1))
            g = _complex(F.linear(grad_y, w.t()))  # dx, a buffer of our own
            grads, g, init_grad = ctx.scan.backward(
                params, bu, x, initial_state if direction == 0 else None,
                resets if direction == 0 else reverse_resets, direction == 1, g,
            )  # fmt: skip
            d_params = grads if d_params is None else tuple(a + b for a, b in zip(d_params, grads))
            if direction == 0 and initial_state is not None:
                d_init = init_grad
            d_bu = g if d_bu is None else d_bu.add_(g)
        d_bu = _real(d_bu)
        if padding is not None:
            d_bu.mul_(padding[..., None])
        d_w_in = d_bu.flatten(0, 1).t() @ u.flatten(0, 1)
        d_d, d_u = _skip_backward(grad_y, u, d, ctx.needs_input_grad[2])  # last: d_u is new memory
        if d_u is not None:
            d_u.flatten(0, 1).addmm_(d_bu.flatten(0, 1), w_in)
        return None, None, d_u, d_w_in, d_d, d_init, None, None, None, *d_params, *d_w_outs


def s5_core(
    scan: Invariant | Irregular,
    u: torch.Tensor,
    w_in: torch.Tensor,
    w_outs: list[torch.Tensor],
    d: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    reverse_resets: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """y real (B, L, H) (module docstring); one direction per entry of w_outs (1 or 2)."""
    args = (u, w_in, d, initial_state, resets, reverse_resets, padding)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*args, *scan.params, *w_outs)):
        return _Core.apply(scan, len(scan.params), *args, *scan.params, *w_outs)
    return _forward(scan, scan.params, *args, w_outs)[0]
