"""train: a run from its setup, through its epochs (train, validate, checkpoint), to its summary."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch

from .. import checkpoint, distributed, rundir, settings
from ..io import atomic_write_text
from . import checkpointing
from .data import Data
from .epoch import end_epoch, train_epoch
from .evaluation import evaluate
from .run import Run
from .setup import setup_run


def train(cfg: dict, run_dir: str | Path, resume: bool = False, log=print, data: Data | None = None,
          extras: bool = True) -> dict:  # fmt: skip
    """Train per cfg into run_dir (or continue it with resume=True); returns the summary dict.

    data: the splits to train on, when the caller has them in memory already (otherwise
    load_data(cfg) reads them; a resumed run always reads them).
    extras: also write the TensorBoard events and curves.png (off for a throw-away run).

    Under torchrun every process calls this; training is data-parallel (see
    s5ssm.distributed and s5ssm.training) and only the main process writes or logs
    anything; the others return an empty dict. The process group is destroyed on the way
    out, also after an error.
    """
    settings.validate(cfg)  # the command line validated them already; a library caller may not have
    ctx, device = distributed.setup(cfg["device"])
    try:  # the main process holds the run directory's lock (s5ssm.rundir) for the whole run
        with rundir.locked(run_dir) if ctx.main else contextlib.nullcontext(), rundir.StopOnInterrupt(
            not ctx.distributed
        ) as stop:  # Ctrl-C: stop at the next step with a checkpoint (one process only)
            return _train(cfg, Path(run_dir), resume, log if ctx.main else (lambda *_: None), ctx, device, stop,
                          data, extras)  # fmt: skip
    finally:
        distributed.teardown(ctx)


def _train(cfg: dict, run_dir: Path, resume: bool, log, ctx: distributed.Context, device: torch.device,
           stop: rundir.StopOnInterrupt, data: Data | None, extras: bool) -> dict:  # fmt: skip
    """The run of `train`: setup, then per epoch train, validate and checkpoint, then evaluate."""
    run = setup_run(cfg, run_dir, resume, log, ctx, device, stop, data, extras)
    for epoch in range(run.progress["epoch"], int(cfg["epochs"])):
        if run.progress.get("stopped_early"):
            break
        train_epoch(run, epoch)
        improved = end_epoch(run, epoch)
        checkpointing.save(run, ("last", "best") if improved else ("last",))
        if stop.requested and epoch + 1 < int(cfg["epochs"]):
            raise rundir.Interrupted(run_dir, run.progress["global_step"])
    return _finish(run)


def _finish(run: Run) -> dict:
    """Evaluate the best checkpoint on every split and write summary.json; returns the
    summary (an empty dict on the processes other than the main one)."""
    run.runlog.close()
    distributed.barrier(run.ctx)  # the best checkpoint is on disk before anyone reads it
    checkpoint.restore(run.net, checkpoint.load_model(run.ckpt_dir, "best"), run.ckpt_dir, "best")
    results = {split: evaluate(run.net, ds, run.data.info, run.batch_size, run.device, run.ctx)
               for split, ds in run.data.splits.items()}  # fmt: skip
    if not run.ctx.main:
        return {}
    progress, cfg = run.progress, run.cfg
    summary = {
        "model": cfg["model"],
        "task": cfg.get("task") or cfg.get("data"),
        "metric": run.metric_name,
        "best_epoch": progress["best_epoch"],
        "epochs_trained": progress["epoch"],
        "stopped_early": bool(progress.get("stopped_early")),
        "results": results,
        "param_count": sum(p.numel() for p in run.net.parameters()),
        "processes": run.ctx.world,
        "wall_seconds": round(time.perf_counter() - run.start_time, 1),
        "run_dir": str(run.run_dir),
    }
    atomic_write_text(run.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary
