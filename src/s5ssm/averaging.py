"""An exponential moving average of a model's weights (`--ema DECAY`).

After each optimizer step t (0-based) every parameter's average moves towards its new value:

    average <- d_t · average + (1 - d_t) · parameter,    d_t = min(DECAY, (1 + t) / (10 + t))

(the ramp keeps the first steps from weighting the random initialisation for long). The
averaged weights are what validation measures and what checkpoints hold as the model, so
eval, predict, save_pretrained and export all read them; the weights the optimizer moves are
kept beside them for resuming. Buffers (BatchNorm's running statistics) are not averaged:
they are already running averages, and the live ones are used with the averaged weights.

On small noisy sets the weights of single steps swing from epoch to epoch (and the validation
metric with them); their average moves slowly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

RAMP = 10  # d_t reaches DECAY's neighbourhood after a few times this many steps


def decay_at(step: int, decay: float) -> float:
    """d_t of the module docstring for 0-based optimizer step `step`."""
    return min(decay, (1 + step) / (RAMP + step))


class WeightAverage:
    """The moving average of `net`'s parameters, starting at their current values.

    Args:
        net: the model whose parameters (by name) are averaged.
        decay: DECAY in [0, 1); 0 keeps the latest weights.
    """

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema: the decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.weights = {name: p.detach().clone() for name, p in net.named_parameters()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module, step: int) -> None:
        """Move the average towards net's parameters after optimizer step `step` (0-based)."""
        keep = decay_at(step, self.decay)
        for name, p in net.named_parameters():
            self.weights[name].lerp_(p.detach(), 1.0 - keep)

    @contextmanager
    def swapped_in(self, net: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
        """net with the averaged parameters inside the block, its own after it. Yields
        copies of net's own parameters by name (what a checkpoint keeps for resuming)."""
        live = {name: p.detach().clone() for name, p in net.named_parameters()}
        copy_into(net, self.weights)
        try:
            yield live
        finally:
            copy_into(net, live)


@torch.no_grad()
def copy_into(net: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` (every parameter of net, by name) into net's parameters in place."""
    for name, p in net.named_parameters():
        p.copy_(weights[name])
