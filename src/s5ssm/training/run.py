"""Run: what a training run holds from its setup to its summary."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed, rundir
from ..averaging import WeightAverage
from .data import Data
from .runlog import RunLog


@dataclass
class Run:
    """What a training run holds from its setup to its summary (built by setup.setup_run)."""

    cfg: dict
    run_dir: Path
    ctx: distributed.Context
    device: torch.device
    log: Callable
    stop: rundir.StopOnInterrupt
    data: Data
    net: torch.nn.Module  # the model: checkpointed and evaluated
    model: torch.nn.Module  # what trains: net, wrapped in DDP under torchrun and cast to the precision
    optimizer: torch.optim.Optimizer
    average: WeightAverage | None  # the moving average of net's weights (cfg["ema"]), or None
    scale: torch.Tensor | None  # (T,) regression target scale of the loss, or None
    progress: dict  # epoch, batch, global_step, running sums, best, ..., seconds: all a checkpoint resumes
    runlog: RunLog
    steps_per_epoch: int
    start_time: float  # perf_counter() at the run's start, less the seconds trained before a resume

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def batch_size(self) -> int:
        return int(self.cfg["batch_size"])

    @property
    def metric_name(self) -> str:
        return self.data.info["metric"]

    def averaged(self):
        """A context in which net holds its averaged weights (when averaging); it yields the
        optimizer's own weights by name, or {}."""
        return self.average.swapped_in(self.net) if self.average is not None else contextlib.nullcontext({})
