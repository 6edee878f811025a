"""The run directory's metrics: CSV rows, TensorBoard events, the curves plot, and the
progress bar of an epoch."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from ..io import atomic_write_text


class ProgressBar:
    """tqdm over the batches of an epoch (stderr, off when not a terminal or quiet)."""

    def __init__(self, total: int, initial: int, epoch: int, quiet: bool) -> None:
        from tqdm.auto import tqdm

        disable = quiet or not os.isatty(2)
        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch}", disable=disable, leave=False)

    def update(self, loss: float, metric_name: str, metric: float, rate: float) -> None:
        self.bar.set_postfix({"loss": f"{loss:.4f}", metric_name: f"{metric:.4f}", "seq/s": f"{rate:.0f}"})
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _append_csv(path: Path, row: dict) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, key: str, limit: float) -> None:
    """Drop rows written after the checkpoint being resumed (key > limit)."""
    if not path.exists():
        return
    with path.open() as handle:
        reader = csv.DictReader(handle)
        # a row cut short by a kill mid-append has missing or empty fields: drop it too
        kept = [r for r in reader if all(v not in (None, "") for v in r.values()) and float(r[key]) <= limit]
        fields = reader.fieldnames
    text = ""
    if fields:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
        text = buffer.getvalue()
    atomic_write_text(path, text)


def _plot(run_dir: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    with (run_dir / "metrics_epochs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    metric = [k[len("val_"):] for k in rows[0] if k.startswith("val_") and k != "val_loss"][0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", metric)):
        ax.plot(epochs, [float(r[f"train_{key}"]) for r in rows], label="train")
        ax.plot(epochs, [float(r[f"val_{key}"]) for r in rows], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)



class RunLog:
    """The run directory's metrics: CSV rows, TensorBoard events (when tensorboard is
    installed), the curves plot. Inactive on every process but the main one."""

    # redrawing the curves costs about a second: at most this often while training, and at the end
    PLOT_EVERY_SECONDS = 60.0

    def __init__(self, run_dir: Path, active: bool, resume_step: int | None, log, extras: bool = True) -> None:
        self.run_dir, self.active, self.writer, self.extras = run_dir, active, None, extras
        self.plotted_at = time.perf_counter()
        if not (active and extras):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log("TensorBoard events are off (pip install tensorboard to write them)")
        else:  # on resume, drop the events logged after the checkpoint (steps >= resume_step)
            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step)

    def flush(self) -> None:
        """Put the events logged so far on disk (before a checkpoint, which a resume purges after)."""
        if self.writer is not None:
            self.writer.flush()

    def truncate(self, progress: dict) -> None:
        """Forget what was logged after the checkpoint a resumed run starts from."""
        if self.active:
            _truncate_csv(self.run_dir / "metrics_steps.csv", "step", progress["global_step"])
            _truncate_csv(self.run_dir / "metrics_epochs.csv", "epoch", progress["epoch"] - 1)

    def step(self, row: dict) -> None:
        if not self.active:
            return
        _append_csv(self.run_dir / "metrics_steps.csv", row)
        if self.writer is not None:
            self.writer.add_scalar("train/loss", row["loss"], row["step"])
            self.writer.add_scalar("train/lr", row["lr"], row["step"])

    def epoch(self, row: dict, global_step: int) -> None:
        if not self.active:
            return
        _append_csv(self.run_dir / "metrics_epochs.csv", row)
        if self.writer is not None:
            for key, value in row.items():
                if key.startswith(("train_", "val_")):
                    self.writer.add_scalar(f"epoch/{key}", value, global_step)
            self.writer.flush()
        if self.extras and time.perf_counter() - self.plotted_at > self.PLOT_EVERY_SECONDS:
            _plot(self.run_dir)
            self.plotted_at = time.perf_counter()

    def close(self) -> None:
        if self.active and self.extras:
            _plot(self.run_dir)
        if self.writer is not None:
            self.writer.close()
