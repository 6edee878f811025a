"""S5SSM's core on the CPU as one autograd Function, its buffers reused in place.

    y = Σ_directions Re(C~_d x_d) (·2 with conj_sym) + D ⊙ u,   x_d = scan_d(Λ̄, B̄u)

Reference: the same computation as separate ops, S5SSM._project_in -> linear_scan ->
S5SSM._project_out (what every other case runs, and what the tests compare this with).
Autograd cannot reuse a buffer across those ops; one Function can:

    forward   B̄u is written by one GEMM and the (last) scan overwrites it with its states;
    backward  dx_d = grad_y C_d lands in a buffer of our own, and the reverse scan turns it
              into d(B̄u) in place; the GEMMs then give dB̄, du and dC from it.

So a unidirectional layer's forward holds 2 tensors of the states' size (states, y)
instead of 3, and forward+backward peaks at 4 instead of 5 (`s5ssm bench`, memory).
It covers a time-invariant Λ̄ (P,), i.e. a scalar step_scale, without the final state;
S5SSM routes everything else (and torch.compile) through the separate ops.

Shapes: u real (B, L, H); w_in real (2P, H) = B̄ with rows interleaved (re, im);
lambda_bar complex (P,); w_outs real (H, 2P) per direction; d real (H,);
initial_state complex (B, P) or None; resets, reverse_resets, padding bool (B, L) or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cpu import _backward_impl, _forward_impl


def _complex(real: torch.Tensor) -> torch.Tensor:
    """Real (B, L, 2P) interleaved -> complex (B, L, P), sharing memory."""
    return torch.view_as_complex(real.unflatten(-1, (real.shape[-1] // 2, 2)))


def _real(states: torch.Tensor) -> torch.Tensor:
    """Complex (B, L, P) -> real (B, L, 2P) interleaved, sharing memory."""
    return torch.view_as_real(states).flatten(-2)


def _forward(u, w_in, lambda_bar, d, initial_state, resets, reverse_resets, padding, w_outs):
    """y real (B, L, H) and the states per direction (complex (B, L, P))."""
    bu = F.linear(u, w_in)
    if padding is not None:
        bu.mul_(padding[..., None])
    bu = _complex(bu)
    states = []
    if len(w_outs) == 2:  # the forward direction needs B̄u intact for the backward one
        states.append(_forward_impl(lambda_bar, bu, initial_state, resets, False))
        states.append(_forward_impl(lambda_bar, bu, None, reverse_resets, True, in_place=True))
    else:
        states.append(_forward_impl(lambda_bar, bu, initial_state, resets, False, in_place=True))
    y = F.linear(_real(states[0]), w_outs[0]).addcmul_(u, d)
    if len(states) == 2:
        y.flatten(0, 1).addmm_(_real(states[1]).flatten(0, 1), w_outs[1].t())
    return y, states


class _Core(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, w_in, lambda_bar, d, initial_state, resets, reverse_resets, padding, *w_outs):
        y, states = _forward(u, w_in, lambda_bar, d, initial_state, resets, reverse_resets, padding, w_outs)
        ctx.save_for_backward(u, w_in, lambda_bar, d, initial_state, resets, reverse_resets, padding, *w_outs, *states)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, w_in, lambda_bar, d, initial_state, resets, reverse_resets, padding, *rest = ctx.saved_tensors
        directions = len(rest) // 2
        w_outs, states = rest[:directions], rest[directions:]
        grad_y = grad_y.contiguous()
        rows = grad_y.flatten(0, 1)  # (B·L, H)
        d_d = (grad_y * u).flatten(0, 1).sum(0)  # first: its temporary is gone before dx exists
        d_lam, d_init, d_bu, d_w_outs = torch.zeros_like(lambda_bar), None, None, []
        for direction, (w, x) in enumerate(zip(w_outs, states)):
            d_w_outs.append(rows.t() @ _real(x).flatten(0, 1))
            g = _complex(F.linear(grad_y, w.t()))  # dx, a buffer of our own
            lam_grad, g, init_grad = _backward_impl(
                lambda_bar, x, initial_state if direction == 0 else None,
                resets if direction == 0 else reverse_resets, direction == 1, g, in_place=True,
            )  # fmt: skip
            d_lam += lam_grad
            if direction == 0:
                d_init = init_grad
            d_bu = g if d_bu is None else d_bu.add_(g)
        d_bu = _real(d_bu)
        if padding is not None:
            d_bu.mul_(padding[..., None])
        d_w_in = d_bu.flatten(0, 1).t() @ u.flatten(0, 1)
        d_u = F.linear(d_bu, w_in.t()).addcmul_(grad_y, d) if ctx.needs_input_grad[0] else None
        if initial_state is None:
            d_init = None
        return d_u, d_w_in, d_lam, d_d, d_init, None, None, None, *d_w_outs


def s5_core(
    u: torch.Tensor,
    w_in: torch.Tensor,
    lambda_bar: torch.Tensor,
    w_outs: list[torch.Tensor],
    d: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    reverse_resets: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
) -> torch.Tensor:
    """y real (B, L, H) (module docstring); one direction per entry of w_outs (1 or 2)."""
    args = (u, w_in, lambda_bar, d, initial_state, resets, reverse_resets, padding)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (*args, *w_outs)):
        return _Core.apply(*args, *w_outs)
    return _forward(*args, w_outs)[0]
