"""The plain sequential linear scan: the ground truth every other backend is tested against.

    x_k = lambda_bar_k * x_{k-1} + bu_k            (forward, k = 0 .. L-1, x_{-1} = initial_state)
    x_k = lambda_bar_k * x_{k+1} + bu_k            (reverse, k = L-1 .. 0, x_{L} = initial_state)

A reset at step k clears the carried state first (x_{k-1}, or x_{k+1} in reverse, is taken as 0).
"""

from __future__ import annotations

import torch


def scan(
    lambda_bar: torch.Tensor,
    bu: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sequential loop over time, differentiable by plain autograd.

    Args:
        lambda_bar: complex (P,), (B|1, 1, P) or (B|1, L, P): the diagonal transition.
        bu: complex (B, L, P): the input term.
        initial_state: complex (B, P) or None (zeros).
        reverse: run from the last step to the first.
        resets: bool (B, L) or None.

    Returns:
        complex (B, L, P): the states x_0 .. x_{L-1}.

    >>> lam = torch.full((1,), 0.5 + 0j); bu = torch.ones(1, 3, 1, dtype=torch.complex64)
    >>> scan(lam, bu)[0, :, 0].real.tolist()
    [1.0, 1.5, 1.75]
    """
    batch, length, size = bu.shape
    lam = lambda_bar.reshape(1, 1, size) if lambda_bar.dim() == 1 else lambda_bar
    state = initial_state if initial_state is not None else bu.new_zeros(batch, size)
    order = range(length - 1, -1, -1) if reverse else range(length)
    states: list[torch.Tensor | None] = [None] * length
    for k in order:
        lam_k = lam[:, k if lam.shape[1] > 1 else 0]
        if resets is not None:
            state = torch.where(resets[:, k, None], torch.zeros_like(state), state)
        state = lam_k * state + bu[:, k]
        states[k] = state
    return torch.stack(states, dim=1)  # type: ignore[arg-type]
