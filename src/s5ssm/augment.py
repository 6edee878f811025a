"""Training-time augmentation of batches with whole-sequence labels (`--augment`).

Small labelled sets are where S5 overfits: a few hundred sequences are learnt by heart in
tens of epochs. Each training batch is therefore varied three ways, drawn from torch's
global generator (saved in every checkpoint, so a resumed run draws the same):

- crop: each sequence keeps a random window of its valid steps, between CROP_MIN_KEEP of
  them (and two) and all; the rest is masked out (nothing is resized, so the model sees the steps
  at their own rate).
- scale: each sequence's channels are scaled about their own mean over the valid steps by
  a factor drawn from [1 - SCALE_SPREAD, 1 + SCALE_SPREAD].
- mixup (Zhang et al. 2018): the batch is mixed with a shuffled copy of itself with a
  weight lam ~ Beta(MIXUP_ALPHA, MIXUP_ALPHA); the steps valid in both are kept. The loss
  is lam · loss(first labels) + (1 - lam) · loss(second labels); regression targets are
  mixed the same way.

Evaluation, prediction and the validation split never see any of it.
"""

from __future__ import annotations

import torch

CROP_MIN_KEEP = 0.7
SCALE_SPREAD = 0.2
MIXUP_ALPHA = 0.4


def random_crop(mask: torch.Tensor, min_keep: float = CROP_MIN_KEEP) -> torch.Tensor:
    """mask (B, L) bool -> the mask of a random window of each row's valid steps.

    The window keeps round(u · n) of the n valid steps of a row (at least min(n, 2)), u uniform
    in [min_keep, 1], starting at a uniform position among the valid steps; rows with no
    valid step stay empty. Valid steps need not be contiguous: the window counts them.
    """
    B = mask.shape[0]
    counts = mask.sum(dim=1)  # (B,)
    keep = (counts.double() * torch.empty(B, dtype=torch.float64).uniform_(min_keep, 1.0)).round().long()
    keep = torch.minimum(torch.maximum(keep, counts.clamp(max=2)), counts)  # 2 steps or more: BatchNorm needs 2 values
    start = (torch.rand(B, dtype=torch.float64) * (counts - keep + 1).double()).floor().long()
    rank = mask.long().cumsum(dim=1) - 1  # index of each valid step among its row's valid steps
    inside = (rank >= start[:, None].to(mask.device)) & (rank < (start + keep)[:, None].to(mask.device))
    return mask & inside


def random_scale(x: torch.Tensor, mask: torch.Tensor, spread: float = SCALE_SPREAD) -> torch.Tensor:
    """x (B, L, D) float, mask (B, L) -> x with each sequence's channels scaled about their
    mean over the valid steps by a factor uniform in [1 - spread, 1 + spread] (B, 1, D)."""
    weights = mask[..., None].to(x.dtype)
    mean = (x * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True).clamp(min=1)
    factor = torch.empty(x.shape[0], 1, x.shape[2], dtype=torch.float64).uniform_(1 - spread, 1 + spread)
    return mean + (x - mean) * factor.to(x)


def mixup(batch: dict, alpha: float = MIXUP_ALPHA) -> dict:
    """The batch mixed with a shuffled copy of itself: "x" and the mask as described in the
    module docstring, plus "mix": (y of the partner sequences (B, ...), lam)."""
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    partner = torch.randperm(batch["x"].shape[0])
    x, mask = batch["x"], batch["mask"]
    mixed = {**batch, "x": lam * x + (1 - lam) * x[partner], "mask": mask & mask[partner]}
    mixed["mix"] = (batch["y"][partner], lam)
    return mixed


def unfit_reason(info: dict, has_timestamps: bool) -> str | None:
    """Why these augmentations do not fit the data, or None: per-step targets (a crop would
    hide labelled steps), token inputs (nothing to scale or mix) and timestamped sequences
    (a mixed pair has no one time axis)."""
    return ("its targets are per step" if info.get("per_step") else
            "its inputs are tokens" if info.get("vocab_size") else
            "its sequences carry timestamps" if has_timestamps else None)  # fmt: skip


def check_data(info: dict, has_timestamps: bool) -> None:
    """Raise ValueError (naming --augment) when `unfit_reason` finds one."""
    reason = unfit_reason(info, has_timestamps)
    if reason:
        raise ValueError(f"--augment applies to float inputs with whole-sequence labels; this data does not fit: "
                         f"{reason} (leave --augment off)")


def augment(batch: dict) -> dict:
    """A training batch ({"x": (B, L, D) float, "mask": (B, L) bool, "y", ...}) varied by
    crop, scale and mixup (see the module docstring); the input batch is not changed."""
    mixed = mixup(batch)  # first: a crop of the mixed mask keeps at least one step of every row
    mask = random_crop(mixed["mask"])
    return {**mixed, "x": random_scale(mixed["x"], mask), "mask": mask}
