"""A run's start: the run directory, the data, the model and its optimizer, and on resume
the last checkpoint loaded into them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml

from .. import checkpoint, distributed, precision, rundir
from ..augment import check_data
from ..averaging import WeightAverage, copy_into
from ..data import labels
from ..io import atomic_write_text
from .build import build_model, fit_scaling, target_std
from .checkpointing import resume_state
from .data import CLASSES_NAME, Data, check_classes, load_data
from .optim import parameter_groups
from .run import Run
from .runlog import RunLog


def setup_run(cfg: dict, run_dir: Path, resume: bool, log, ctx: distributed.Context, device: torch.device,
              stop: rundir.StopOnInterrupt, data: Data | None, extras: bool) -> Run:  # fmt: skip
    """Open the run directory, read the data, build model and optimizer, and (resume) load
    the last checkpoint into them. Seeds the RNG in the order exact resume relies on."""
    _open_run_dir(cfg, run_dir, resume, ctx, log)
    torch.manual_seed(int(cfg["seed"]))
    data = data if data is not None and not resume else load_data(cfg)
    info = data.info
    _record_classes(run_dir, info, resume, ctx)
    train_set = data.splits["train"]
    distributed.check_world(ctx, len(train_set))
    if cfg.get("augment"):
        check_data(info, train_set.timestamps is not None)
    net = build_model(cfg, info)
    fit_scaling(net, train_set)
    net = net.to(device)
    scale = target_std(net)
    if ctx.rank:
        torch.manual_seed(distributed.process_seed(int(cfg["seed"]), ctx.rank))
    optimizer = torch.optim.AdamW(parameter_groups(net, cfg))
    steps_per_epoch = distributed.steps_per_epoch(len(train_set), int(cfg["batch_size"]), ctx)
    progress, live = resume_state(cfg, run_dir, ctx, net, optimizer) if resume else (_fresh_progress(), {})
    average = _weight_average(net, float(cfg.get("ema") or 0.0), live, resume, run_dir)
    runlog = RunLog(run_dir, ctx.main, progress["global_step"] + 1 if resume else None, log, extras)
    if resume:
        runlog.truncate(progress)
        log(f"resuming {run_dir} at epoch {progress['epoch']}, batch {progress['batch']}")
    log(f"{cfg['model']} model, {sum(p.numel() for p in net.parameters()):,} parameters; "
        + " / ".join(f"{len(ds)} {name}" for name, ds in data.splits.items()) + " sequences"
        + (f"; {ctx.world} processes at batch size {int(cfg['batch_size'])} each" if ctx.distributed else ""))  # fmt: skip
    model = _training_model(net, cfg, ctx, device)
    return Run(cfg, run_dir, ctx, device, log, stop, data, net, model, optimizer, average, scale, progress, runlog,
               steps_per_epoch, time.perf_counter() - progress["seconds"])  # fmt: skip


def _open_run_dir(cfg: dict, run_dir: Path, resume: bool, ctx: distributed.Context, log) -> None:
    """A new run: refuse a directory that holds one, else clear it and write config.yaml."""
    if resume:
        return
    if (run_dir / "checkpoints" / "last.json").exists():
        raise FileExistsError(f"{run_dir}: already holds a run; use --resume {run_dir} or another --run_dir")
    if ctx.main:
        rundir.start_clean(run_dir, log)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))


def _record_classes(run_dir: Path, info: dict, resume: bool, ctx: distributed.Context) -> None:
    """Classification: write classes.json (new run) or check the data still has them (resume)."""
    if not ctx.main or info["kind"] != "classification":
        return
    if resume:
        check_classes(run_dir, info)
    else:
        atomic_write_text(run_dir / CLASSES_NAME, json.dumps(labels.class_names(info)))


def _fresh_progress() -> dict:
    """The progress of a run before its first step (see Run.progress)."""
    return {"epoch": 0, "batch": 0, "global_step": 0, "sums": [0.0, 0.0, 0], "best": None,
            "best_loss": None, "best_epoch": None, "stopped_early": False, "seconds": 0.0}  # fmt: skip


def _weight_average(net: torch.nn.Module, decay: float, live: dict, resume: bool, run_dir: Path) -> WeightAverage | None:
    """The moving average of net's weights (decay 0: none). A resumed run's net holds the
    average; the optimizer's own weights (`live`) go back into it."""
    if not decay:
        return None
    average = WeightAverage(net, decay)
    if resume:
        missing = sorted({name for name, _ in net.named_parameters()} - set(live))
        if missing:
            path = checkpoint.resolve(run_dir / "checkpoints", "last") / "optimizer.safetensors"
            raise checkpoint.CheckpointError(f"{path}: no live.{missing[0]} (the weights of an --ema run); damaged, "
                                             f"or not saved by an --ema run")  # fmt: skip
        copy_into(net, live)
    return average


def _training_model(net: torch.nn.Module, cfg: dict, ctx: distributed.Context, device: torch.device) -> torch.nn.Module:
    """net as it trains: in DistributedDataParallel under torchrun, cast to cfg's precision.
    Every process starts from the same weights (same seed; DDP also broadcasts rank 0's)."""
    model = net
    if ctx.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return precision.for_training(model, cfg.get("precision", "fp32"), device)
