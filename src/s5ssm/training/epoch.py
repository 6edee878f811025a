"""One epoch of a run: its optimizer steps, then validation, the best epoch and early stopping."""

from __future__ import annotations

import time

import torch

from .. import distributed, rundir
from ..augment import augment
from . import checkpointing
from .batches import batch_loss, epoch_order, loader, step_loss
from .evaluation import evaluate
from .optim import lr_factor_at
from .run import Run
from .runlog import ProgressBar


def train_epoch(run: Run, epoch: int) -> None:
    """Train `epoch` from progress["batch"] on (0, or where a resumed run stopped), logging
    each step; mid-epoch, save "last" every checkpoint_every steps and on Ctrl-C (then stop)."""
    cfg, progress, ctx = run.cfg, run.progress, run.ctx
    train_set = run.data.splits["train"]
    every = int(cfg["checkpoint_every"])
    run.model.train()
    order = distributed.shard(epoch_order(len(train_set), int(cfg["seed"]), epoch), run.batch_size, ctx)
    bar = ProgressBar(run.steps_per_epoch, progress["batch"], epoch, cfg["quiet"] or not ctx.main)
    tick = time.perf_counter()
    for index, batch in enumerate(loader(train_set, run.batch_size, order)):
        if index < progress["batch"]:
            continue  # done before the checkpoint this run resumed from
        step = progress["global_step"]
        if cfg.get("augment"):
            batch = augment(batch)
        logged, sums = _train_step(run, batch, step)
        progress["sums"] = [total + value for total, value in zip(progress["sums"], sums)]
        progress["batch"], progress["global_step"] = index + 1, step + 1
        run.runlog.step({"step": step + 1, "epoch": epoch, "lr": run.optimizer.param_groups[-1]["lr"], "loss": logged})
        now = time.perf_counter()
        bar.update(logged, run.metric_name, sums[1] / max(sums[2], 1), len(batch["y"]) * ctx.world / max(now - tick, 1e-9))
        tick = now
        mid_epoch = index + 1 < run.steps_per_epoch  # (the epoch's end saves anyway)
        if mid_epoch and (run.stop.requested or (every and (step + 1) % every == 0)):
            progress["seconds"] = time.perf_counter() - run.start_time
            checkpointing.save(run, ("last",))
        if mid_epoch and run.stop.requested:
            raise rundir.Interrupted(run.run_dir, progress["global_step"])
    bar.close()


def _train_step(run: Run, batch: dict, step: int) -> tuple[float, list]:
    """One optimizer step at global step `step` (0-based) on `batch` (this process's share).

    Returns the logged loss (over all processes) and the batch sums [loss, metric, count]."""
    cfg, steps = run.cfg, run.steps_per_epoch
    for group in run.optimizer.param_groups:
        group["lr"] = lr_factor_at(step, steps * int(cfg["warmup_epochs"]), steps * int(cfg["epochs"]),
                                   group["base_lr"], cfg["lr_min"])  # fmt: skip
    loss, logged, sums = step_loss(*batch_loss(run.model, batch, run.data.info, run.device, run.scale), run.ctx,
                                   run.device)  # fmt: skip
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg["grad_clip"])
    run.optimizer.step()
    if run.average is not None:
        run.average.update(run.net, step)
    return logged, sums


def end_epoch(run: Run, epoch: int) -> bool:
    """Validate after `epoch`, log its row, track the best epoch and early stopping, and
    advance progress to the next epoch. Returns whether the validation result improved."""
    progress, metric_name = run.progress, run.metric_name
    total_loss, total_metric, total_count = progress["sums"]  # over all processes
    distributed.share_buffers(run.net, run.ctx)
    with run.averaged():
        val = evaluate(run.net, run.data.splits["val"], run.data.info, run.batch_size, run.device, run.ctx)
    row = {"epoch": epoch, "train_loss": total_loss / max(total_count, 1),
           f"train_{metric_name}": total_metric / max(total_count, 1),
           "val_loss": val["loss"], f"val_{metric_name}": val[metric_name],
           "seconds": round(time.perf_counter() - run.start_time, 2)}  # fmt: skip
    run.log(f"epoch {epoch}: train loss {row['train_loss']:.4f} {metric_name} {row[f'train_{metric_name}']:.4f} | "
            f"val loss {val['loss']:.4f} {metric_name} {val[metric_name]:.4f}")  # fmt: skip
    select_by = run.cfg.get("select_by", "metric")
    improved = _better(metric_name, val[metric_name], val["loss"], progress, select_by)
    patience = int(run.cfg.get("patience") or 0)
    if improved:
        progress.update(best=val[metric_name], best_loss=val["loss"], best_epoch=epoch)
    elif patience and epoch - progress["best_epoch"] >= patience:
        progress["stopped_early"] = True
        criterion = "loss" if select_by == "loss" else metric_name
        run.log(f"stopping early: no better validation {criterion} for {patience} epochs (best: epoch "
                f"{progress['best_epoch']})")  # fmt: skip
    progress.update(epoch=epoch + 1, batch=0, sums=[0.0, 0.0, 0], seconds=time.perf_counter() - run.start_time)
    run.runlog.epoch(row, progress["global_step"])
    return improved


def _better(metric: str, value: float, loss: float, progress: dict, select_by: str = "metric") -> bool:
    """Is this validation result better than the best so far? select_by "metric": the higher
    accuracy (lower MSE), equal metrics (frequent on small validation sets) going to the
    lower loss; "loss": the lower loss."""
    best, best_loss = progress["best"], progress.get("best_loss")
    if select_by == "loss":
        return best_loss is None or loss < best_loss
    if best is None or value != best:
        return best is None or (value > best if metric == "accuracy" else value < best)
    return best_loss is None or loss < best_loss
