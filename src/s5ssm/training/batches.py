"""Batches: the order of an epoch, the loader over it, and the loss of a batch."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from .. import distributed
from ..data import SequenceDataset, collate


def loader(dataset: SequenceDataset, batch_size: int, order: np.ndarray | None = None) -> DataLoader:
    """Batches (s5ssm.data.collate) of dataset, in its own order or that of the indices `order` (N,)."""
    items = dataset if order is None else dataset.subset(order)
    # A private generator: a DataLoader iterator otherwise draws its base seed from the
    # global torch RNG, which also drives dropout, and a resumed run would drift.
    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator())


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation (n,) of the training sequences in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0x5E5]).permutation(n)


def batch_loss(model, batch: dict, info: dict, device, scale: torch.Tensor | None = None) -> tuple[torch.Tensor, float, int]:
    """(loss sum, metric sum, count) of one batch; the loss sum is the tensor to differentiate.

    Classification: cross-entropy, metric = correct predictions, count = sequences.
    Regression: metric = squared error in the data's units, count = target elements (valid
    steps only); the loss is the squared error in units of `scale` (T,) (the targets' std
    when they are standardised), so its size does not depend on the targets' units.
    A mixed batch (s5ssm.augment.mixup, key "mix") is scored against its mixed labels.
    """
    x, mask, y = batch["x"].to(device), batch["mask"].to(device), batch["y"].to(device)
    kwargs = {"mask": mask}
    if "step_scale" in batch:
        kwargs["step_scale"] = batch["step_scale"].to(device)
    out = model(x, **kwargs)
    partner, lam = batch.get("mix", (None, 1.0))  # s5ssm.augment.mixup: the second labels and their weight
    if info["kind"] == "classification":
        loss_sum = F.cross_entropy(out, y, reduction="sum")
        if partner is not None:
            loss_sum = lam * loss_sum + (1 - lam) * F.cross_entropy(out, partner.to(device), reduction="sum")
        count = y.shape[0]
        metric = float((out.argmax(-1) == y).sum())
    else:
        if partner is not None:
            y = lam * y + (1 - lam) * partner.to(device)
        err = (out - y.to(out.dtype)) ** 2
        if info.get("per_step"):
            err = err * mask[..., None]
            count = int(mask.sum()) * y.shape[-1]
        else:
            count = err.numel()
        metric = float(err.sum().detach())
        loss_sum = (err / scale.to(err.dtype) ** 2).sum() if scale is not None else err.sum()
    return loss_sum, metric, count



def step_loss(loss_sum: torch.Tensor, metric: float, count: int, ctx: distributed.Context, device) -> tuple:
    """(loss to differentiate, the batch's mean loss to log, [loss, metric, count] sums of the batch).

    Alone: the batch mean. Under torchrun the sums are those of the global batch (all
    processes), and the loss is loss_sum · world / global count: DDP averages the gradients
    over the processes, which makes that the gradient of the global batch's mean loss even
    when the processes' counts differ (masked per-step targets).
    """
    if not ctx.distributed:
        loss = loss_sum / max(count, 1)
        return loss, float(loss.detach()), [float(loss_sum.detach()), metric, count]
    sums = distributed.sum_over_ranks([float(loss_sum.detach()), metric, count], ctx, device)
    return loss_sum * (ctx.world / max(sums[2], 1)), sums[0] / max(sums[2], 1), sums

