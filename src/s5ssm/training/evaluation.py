"""Evaluation: the loss and metric of a model over a whole split, split between the processes under torchrun."""

from __future__ import annotations

import numpy as np
import torch

from .. import distributed
from ..data import SequenceDataset
from .batches import batch_loss, loader
from .build import target_std


def _evaluation_share(dataset: SequenceDataset, ctx: distributed.Context) -> SequenceDataset | None:
    """The sequences this process evaluates: every world-th from its rank (None if none)."""
    if not ctx.distributed:
        return dataset
    indices = np.arange(ctx.rank, len(dataset), ctx.world)
    return dataset.subset(indices) if len(indices) else None


@torch.no_grad()
def evaluate(model, dataset: SequenceDataset, info: dict, batch_size: int, device,
             ctx: distributed.Context = distributed.Context()) -> dict:  # fmt: skip
    """{"loss", metric name: value} over the whole split, in eval mode.

    Under torchrun (ctx) each process evaluates its share of the split and the sums are
    added up over the processes, which must hold the same weights: every process returns
    the numbers of the whole split.
    """
    was_training = model.training
    model.eval()
    loss, metric, count = 0.0, 0.0, 0
    share = _evaluation_share(dataset, ctx)
    scale = target_std(model)
    for batch in loader(share, batch_size) if share is not None else ():
        l_sum, m_sum, n = batch_loss(model, batch, info, device, scale)
        loss, metric, count = loss + float(l_sum.detach()), metric + m_sum, count + n
    model.train(was_training)
    loss, metric, count = distributed.sum_over_ranks([loss, metric, count], ctx, device)
    return {"loss": loss / max(count, 1), info["metric"]: metric / max(count, 1)}

