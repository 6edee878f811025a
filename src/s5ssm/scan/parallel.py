"""Work-efficient parallel associative scan in plain torch ops (runs on any device).

The pairs c_k = (a_k, b_k) combine with (a_i, b_i) • (a_j, b_j) = (a_j a_i, a_j b_i + b_j).
One level combines neighbours (0,1), (2,3), ...; the half-length problem is solved
recursively, and the even positions are filled in from their left neighbours: O(L) work,
O(log L) depth (Blelloch 1990; the structure of jax.lax.associative_scan). Resets are a
zero transition (a_k = 0) and the initial state folds into b_0, so neither needs a flag.
Differentiated by torch autograd, which keeps every level: the compiled CPU backend
(cpu.py) is the lean one.
"""

from __future__ import annotations

import torch


def _inclusive_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x_k = a_k x_{k-1} + b_k with x_{-1} = 0, along dim 1. a, b: complex (B, L, P)."""
    length = b.shape[1]
    if length == 1:
        return b
    a_left, a_right = a[:, 0 : length - 1 : 2], a[:, 1::2]
    b_left, b_right = b[:, 0 : length - 1 : 2], b[:, 1::2]
    odd = _inclusive_scan(a_right * a_left, a_right * b_left + b_right)  # x_1, x_3, ...
    even_rest = a[:, 2::2] * odd[:, : (length - 1) // 2] + b[:, 2::2]  # x_2, x_4, ...
    even = torch.cat([b[:, :1], even_rest], dim=1)
    if length % 2:
        odd = torch.cat([odd, torch.zeros_like(odd[:, :1])], dim=1)
    out = torch.stack([even, odd], dim=2).flatten(1, 2)
    return out[:, :length]


def scan(
    lambda_bar: torch.Tensor,
    bu: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same signature and result as `reference.scan`; complex (B, L, P) states."""
    if reverse:
        flipped = lambda_bar.flip(1) if lambda_bar.dim() == 3 else lambda_bar
        return scan(
            flipped,
            bu.flip(1),
            initial_state,
            False,
            None if resets is None else resets.flip(1),
        ).flip(1)
    a = lambda_bar.expand_as(bu)
    if resets is not None:
        a = torch.where(resets[..., None], torch.zeros_like(a), a)
    if initial_state is not None:
        bu = torch.cat([bu[:, :1] + a[:, 0:1] * initial_state[:, None], bu[:, 1:]], dim=1)
    return _inclusive_scan(a, bu)
