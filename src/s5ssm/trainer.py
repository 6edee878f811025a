"""Training and evaluation: the paper's optimiser set-up, exact resume, a run directory.

A run directory holds
    config.yaml          the resolved configuration (every option, after defaults)
    classes.json         classification: the class names, in the order of the model's outputs
    metrics_steps.csv    step, epoch, lr, loss
    metrics_epochs.csv   epoch, train/val loss and metric, seconds
    tensorboard/         the same as TensorBoard events (when tensorboard is installed)
    curves.png           training and validation curves (when matplotlib is installed)
    checkpoints/         see s5ssm.checkpoint ("last" and "best")
    summary.json         final metrics per split, best epoch, wall time, parameter count

Exact resume: each epoch's order is a permutation drawn from (seed, epoch); a checkpoint
stores the model, optimizer, torch RNG state (dropout) of every process, the position
inside the epoch and the epoch's running sums; the learning rate is a pure function of the
global step. So a run killed at any point and resumed from its last checkpoint ends with
the same metrics, bit for bit, as a run never interrupted.

Under torchrun (see s5ssm.distributed) each process trains on its shard of every global
batch and the model is wrapped in DistributedDataParallel. Batch sums (loss, metric,
count) are added up over the processes at every step and evaluation splits the sequences
between them, so every process holds the same numbers; only the main process writes.
BatchNorm statistics stay per process, as in the paper's code; DDP hands rank 0's running
statistics to every process at each forward, and rank 0's are the ones checkpointed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from . import checkpoint, distributed, precision, rundir, settings
from .augment import augment, check_data
from .averaging import WeightAverage
from .baselines import RNNModel
from .data import SequenceDataset, collate, get_task, labels, load_file, seeded_split
from .io import atomic_write_text
from .model import S5Model
from .settings import OPT_CONFIGS

CLASSES_NAME = "classes.json"  # the class names a classification run was trained on, in output order


# ---------------------------------------------------------------------------- data
@dataclass
class Data:
    splits: dict[str, SequenceDataset]
    info: dict  # kind, metric, input_dim | vocab_size, output_dim, per_step, ...


def _test_sibling(path: Path) -> Path | None:
    for tag in ("_TRAIN", "_train", "-train", "_Train"):
        if tag in path.stem:
            sibling = path.with_name(path.stem.replace(tag, tag.replace("rain", "est").replace("RAIN", "EST")) + path.suffix)
            return sibling if sibling.is_file() else None
    return None


def load_data(cfg: dict) -> Data:
    """The train/val/test splits named by cfg (task, or data [+ test_data]), deterministic from cfg["seed"]."""
    seed = int(cfg["seed"])
    if cfg.get("task"):
        task = get_task(cfg["task"], **(cfg.get("task_options") or {}))
        splits = task.make(seed=seed, size=cfg.get("size") or "default")
        info = dict(task.info, timestamps=splits["train"].timestamps is not None)
    else:
        path = Path(cfg["data"])
        train, info = load_file(path)
        test_path = Path(cfg["test_data"]) if cfg.get("test_data") else _test_sibling(path)
        stratify = info["kind"] == "classification"
        if test_path is not None:  # renumbered into the training classes, its inputs checked
            test = labels.conform(*load_file(test_path), info, str(test_path))
        else:
            test, train = seeded_split(train, 0.2, seed, stratify=stratify)
        data = holdout(train, info, cfg)
        data.splits["test"] = test
        return data
    return Data(splits, info)


def holdout(train: SequenceDataset, info: dict, cfg: dict) -> Data:
    """Train and validation splits of one dataset: cfg["val_fraction"] of it held out (from
    cfg["seed"]), stratified by class for classification."""
    stratify = info["kind"] == "classification"
    val, train = seeded_split(train, float(cfg.get("val_fraction", 0.1)), int(cfg["seed"]) + 1, stratify=stratify)
    info = dict(info, metric="accuracy" if stratify else "mse")
    return Data({"train": train, "val": val}, info)


# ---------------------------------------------------------------------------- model
def build_model(cfg: dict, info: dict) -> torch.nn.Module:
    """The model cfg names for data described by info; standardisation (cfg["standardize"])
    of float inputs, and of the targets of a regression, starts as the identity: see fit_scaling."""
    tokens = bool(info.get("vocab_size"))
    inputs = {"vocab_size": info["vocab_size"]} if tokens else {"embed_dim": info["input_dim"]}
    pooling = "none" if info.get("per_step") else cfg["pooling"]
    standardize = bool(cfg.get("standardize"))
    inputs["standardize_inputs"] = standardize and not tokens
    inputs["standardize_outputs"] = standardize and info["kind"] == "regression"
    if cfg["model"] == "s5":
        # a run directory written before an option existed leaves it to S5Model's default
        options = {k: cfg[k] for k in S5_OPTIONS if k in cfg}
        options["pooling"] = pooling
        return S5Model(**inputs, output_dim=info["output_dim"], **options)
    encoder = {k: cfg[k] for k in ("encoder", "image_shape") if k in cfg}
    return RNNModel(cfg["model"], **inputs, hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"],
                    dropout=cfg["dropout"], output_dim=info["output_dim"], pooling=pooling,
                    time_input=bool(info.get("timestamps")), **encoder)  # fmt: skip


S5_OPTIONS = (
    "hidden_size", "state_size", "num_layers", "dropout", "pooling", "encoder", "encoder_width", "image_shape",
    "blocks", "norm", "prenorm", "activation", "bn_momentum", "conj_sym", "clip_eigs", "bidirectional",
    "discretization", "C_init", "dt_min", "dt_max", "step_rescale", "scan_backend",
)  # fmt: skip


def fit_scaling(net: torch.nn.Module, train: SequenceDataset) -> None:
    """Fit the model's input and output standardisation (where enabled) on the training
    split: every valid step of every sequence, per-step targets at valid steps only."""
    if getattr(net, "input_scaling", None) is not None:
        net.input_scaling.fit(train.inputs)
    if getattr(net, "output_scaling", None) is not None:
        targets = train.targets
        if targets.ndim == 3:  # per step: (N, L_T, T), valid up to each sequence's length
            net.output_scaling.fit(y[:length] for y, length in zip(targets, train.lengths))
        else:
            net.output_scaling.fit([targets])


def target_std(net: torch.nn.Module) -> torch.Tensor | None:
    """The std (T,) a model's regression outputs are standardised by, or None."""
    scaling = getattr(net, "output_scaling", None)
    return scaling.std if scaling is not None else None


def parameter_groups(model: torch.nn.Module, cfg: dict) -> list[dict]:
    """The paper's optimiser groups (lindermanlab/S5 train_helpers.create_train_state).

    "ssm":     Adam at ssm_lr, no weight decay: Λ, log Δ (unless dt_global), norms, and
               B (standard, noBCdecay), C and D (noBCdecay)
    "ssm_wd":  AdamW at ssm_lr with weight decay: B (BandCdecay)
    "regular": AdamW at lr = lr_factor·ssm_lr with weight decay: everything else
    """
    opt = cfg["opt_config"]
    if opt not in OPT_CONFIGS:
        raise ValueError(f"opt_config must be one of {OPT_CONFIGS}, got {opt!r}")
    ssm = {"Lambda_re", "Lambda_im"} | (set() if cfg["dt_global"] else {"log_step"})
    if opt in ("standard", "noBCdecay"):
        ssm.add("B")
    if opt == "noBCdecay":
        ssm |= {"C", "C1", "C2", "D"}
    ssm_wd = {"B"} if opt == "BandCdecay" else set()
    groups: dict[str, list] = {"ssm": [], "ssm_wd": [], "regular": []}
    for name, param in model.named_parameters():
        parts = name.split(".")
        leaf = parts[-1]
        in_ssm = len(parts) > 1 and parts[-2] == "ssm"
        if (in_ssm and leaf in ssm) or ".norm." in f".{name}":
            groups["ssm"].append(param)
        elif in_ssm and leaf in ssm_wd:
            groups["ssm_wd"].append(param)
        else:
            groups["regular"].append(param)
    ssm_lr, lr, wd = cfg["ssm_lr"], cfg["ssm_lr"] * cfg["lr_factor"], cfg["weight_decay"]
    spec = {"ssm": (ssm_lr, 0.0), "ssm_wd": (ssm_lr, wd), "regular": (lr, wd)}
    return [
        {"params": params, "lr": spec[name][0], "base_lr": spec[name][0], "weight_decay": spec[name][1], "name": name}
        for name, params in groups.items()
        if params
    ]


def lr_factor_at(step: int, warmup_steps: int, total_steps: int, base: float, lr_min: float) -> float:
    """Linear warmup from 0 over warmup_steps, then cosine decay from base to lr_min."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr_min + (base - lr_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------- batches
def _loader(dataset: SequenceDataset, batch_size: int, order: np.ndarray | None = None) -> DataLoader:
    items = dataset if order is None else dataset.subset(order)
    # A private generator: a DataLoader iterator otherwise draws its base seed from the
    # global torch RNG, which also drives dropout, and a resumed run would drift.
    return DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=collate, generator=torch.Generator())


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
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
    for batch in _loader(share, batch_size) if share is not None else ():
        l_sum, m_sum, n = batch_loss(model, batch, info, device, scale)
        loss, metric, count = loss + float(l_sum.detach()), metric + m_sum, count + n
    model.train(was_training)
    loss, metric, count = distributed.sum_over_ranks([loss, metric, count], ctx, device)
    return {"loss": loss / max(count, 1), info["metric"]: metric / max(count, 1)}


def _step_loss(loss_sum: torch.Tensor, metric: float, count: int, ctx: distributed.Context, device) -> tuple:
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


def _process_seed(seed: int, rank: int) -> int:
    """The torch seed of process `rank` after the model is built: rank 0 keeps the run's
    stream (a single process is unchanged), the others draw their own dropout masks."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def _rng_states(ctx: distributed.Context) -> list[torch.Tensor]:
    """Every process's torch RNG state, by rank (a collective under torchrun)."""
    state = torch.get_rng_state()
    if not ctx.distributed:
        return [state]
    states: list = [None] * ctx.world
    dist.all_gather_object(states, state)
    return states


def _share_buffers(net: torch.nn.Module, ctx: distributed.Context) -> None:
    """Give every process rank 0's buffers (BatchNorm running statistics, updated by each
    process's own last batch), so all evaluate the model that rank 0 checkpoints."""
    if ctx.distributed:
        for buffer in net.buffers():
            dist.broadcast(buffer, 0)


# ---------------------------------------------------------------------------- run
class _Progress:
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


class _RunLog:
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


def train(cfg: dict, run_dir: str | Path, resume: bool = False, log=print, data: Data | None = None,
          extras: bool = True) -> dict:  # fmt: skip
    """Train per cfg into run_dir (or continue it with resume=True); returns the summary dict.

    data: the splits to train on, when the caller has them in memory already (otherwise
    load_data(cfg) reads them; a resumed run always reads them).
    extras: also write the TensorBoard events and curves.png (off for a throw-away run).

    Under torchrun every process calls this; training is data-parallel (see
    s5ssm.distributed and this module's docstring) and only the main process writes or
    logs anything; the others return an empty dict. The process group is destroyed on the
    way out, also after an error.
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


@dataclass
class _Run:
    """What a training run holds from its setup to its summary (built by _setup)."""

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
    runlog: _RunLog
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


def _train(cfg: dict, run_dir: Path, resume: bool, log, ctx: distributed.Context, device: torch.device,
           stop: rundir.StopOnInterrupt, data: Data | None, extras: bool) -> dict:  # fmt: skip
    """The run of `train`: setup, then per epoch train, validate and checkpoint, then evaluate."""
    run = _setup(cfg, run_dir, resume, log, ctx, device, stop, data, extras)
    for epoch in range(run.progress["epoch"], int(cfg["epochs"])):
        if run.progress.get("stopped_early"):
            break
        _train_epoch(run, epoch)
        improved = _end_epoch(run, epoch)
        _save(run, ("last", "best") if improved else ("last",))
        if stop.requested and epoch + 1 < int(cfg["epochs"]):
            raise rundir.Interrupted(run_dir, run.progress["global_step"])
    return _finish(run)


# ---------------------------------------------------------------------------- run: setup
def _setup(cfg: dict, run_dir: Path, resume: bool, log, ctx: distributed.Context, device: torch.device,
           stop: rundir.StopOnInterrupt, data: Data | None, extras: bool) -> _Run:  # fmt: skip
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
        torch.manual_seed(_process_seed(int(cfg["seed"]), ctx.rank))
    optimizer = torch.optim.AdamW(parameter_groups(net, cfg))
    steps_per_epoch = distributed.steps_per_epoch(len(train_set), int(cfg["batch_size"]), ctx)
    progress, live = _resume_state(cfg, run_dir, ctx, net, optimizer) if resume else (_fresh_progress(), {})
    average = _weight_average(net, float(cfg.get("ema") or 0.0), live, resume, run_dir)
    runlog = _RunLog(run_dir, ctx.main, progress["global_step"] + 1 if resume else None, log, extras)
    if resume:
        runlog.truncate(progress)
        log(f"resuming {run_dir} at epoch {progress['epoch']}, batch {progress['batch']}")
    log(f"{cfg['model']} model, {sum(p.numel() for p in net.parameters()):,} parameters; "
        + " / ".join(f"{len(ds)} {name}" for name, ds in data.splits.items()) + " sequences"
        + (f"; {ctx.world} processes at batch size {int(cfg['batch_size'])} each" if ctx.distributed else ""))  # fmt: skip
    model = _training_model(net, cfg, ctx, device)
    return _Run(cfg, run_dir, ctx, device, log, stop, data, net, model, optimizer, average, scale, progress, runlog,
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
    """The progress of a run before its first step (see _Run.progress)."""
    return {"epoch": 0, "batch": 0, "global_step": 0, "sums": [0.0, 0.0, 0], "best": None,
            "best_loss": None, "best_epoch": None, "stopped_early": False, "seconds": 0.0}  # fmt: skip


def _resume_state(cfg: dict, run_dir: Path, ctx: distributed.Context, net: torch.nn.Module,
                  optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:  # fmt: skip
    """Load the last checkpoint into net, optimizer and this process's RNG; return its progress
    and the optimizer's own weights when net now holds their average (else {}).

    Also checks the best checkpoint reads (it is needed at the end) and rewrites config.yaml
    with the settings a resume may change (s5ssm.settings.RESUMABLE, e.g. more epochs)."""
    ckpt_dir = run_dir / "checkpoints"
    if not (ckpt_dir / "last.json").exists():
        raise FileNotFoundError(f"--resume {run_dir}: the run stopped before its first checkpoint, nothing to "
                                f"resume; train again with --run_dir {run_dir} to start it afresh")  # fmt: skip
    state = checkpoint.load(ckpt_dir, "last")
    if len(state["rng"]) != ctx.world:
        raise ValueError(f"--resume {run_dir}: the run was trained by {len(state['rng'])} process(es) "
                         f"(WORLD_SIZE); resume it with as many, not {ctx.world}")  # fmt: skip
    checkpoint.restore(net, state["model"], ckpt_dir, "last")
    checkpoint.restore(optimizer, state["optimizer"], ckpt_dir, "last", "state.json")
    if (ckpt_dir / "best.json").exists():
        checkpoint.load_model(ckpt_dir, "best")
    torch.set_rng_state(state["rng"][ctx.rank])
    progress = state["progress"]
    if progress["epoch"] > int(cfg["epochs"]):
        raise ValueError(f"--epochs {cfg['epochs']}: {run_dir} has already trained {progress['epoch']} epochs")
    if ctx.main:
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=True))
    return progress, state["live"]


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
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(live[name])
    return average


def _averaged(run: _Run):
    """A context in which run.net holds its averaged weights (when averaging); it yields the
    optimizer's own weights by name, or {}."""
    return run.average.swapped_in(run.net) if run.average is not None else contextlib.nullcontext({})


def _training_model(net: torch.nn.Module, cfg: dict, ctx: distributed.Context, device: torch.device) -> torch.nn.Module:
    """net as it trains: in DistributedDataParallel under torchrun, cast to cfg's precision.
    Every process starts from the same weights (same seed; DDP also broadcasts rank 0's)."""
    model = net
    if ctx.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
    return precision.for_training(model, cfg.get("precision", "fp32"), device)


# ---------------------------------------------------------------------------- run: one epoch
def _train_epoch(run: _Run, epoch: int) -> None:
    """Train `epoch` from progress["batch"] on (0, or where a resumed run stopped), logging
    each step; mid-epoch, save "last" every checkpoint_every steps and on Ctrl-C (then stop)."""
    cfg, progress, ctx = run.cfg, run.progress, run.ctx
    train_set = run.data.splits["train"]
    every = int(cfg["checkpoint_every"])
    run.model.train()
    order = distributed.shard(epoch_order(len(train_set), int(cfg["seed"]), epoch), run.batch_size, ctx)
    bar = _Progress(run.steps_per_epoch, progress["batch"], epoch, cfg["quiet"] or not ctx.main)
    tick = time.perf_counter()
    for index, batch in enumerate(_loader(train_set, run.batch_size, order)):
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
            _save(run, ("last",))
        if mid_epoch and run.stop.requested:
            raise rundir.Interrupted(run.run_dir, progress["global_step"])
    bar.close()


def _train_step(run: _Run, batch: dict, step: int) -> tuple[float, list]:
    """One optimizer step at global step `step` (0-based) on `batch` (this process's share).

    Returns the logged loss (over all processes) and the batch sums [loss, metric, count]."""
    cfg, steps = run.cfg, run.steps_per_epoch
    for group in run.optimizer.param_groups:
        group["lr"] = lr_factor_at(step, steps * int(cfg["warmup_epochs"]), steps * int(cfg["epochs"]),
                                   group["base_lr"], cfg["lr_min"])  # fmt: skip
    loss, logged, sums = _step_loss(*batch_loss(run.model, batch, run.data.info, run.device, run.scale), run.ctx,
                                    run.device)  # fmt: skip
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg["grad_clip"])
    run.optimizer.step()
    if run.average is not None:
        run.average.update(run.net, step)
    return logged, sums


def _end_epoch(run: _Run, epoch: int) -> bool:
    """Validate after `epoch`, log its row, track the best epoch and early stopping, and
    advance progress to the next epoch. Returns whether the validation result improved."""
    progress, metric_name = run.progress, run.metric_name
    total_loss, total_metric, total_count = progress["sums"]  # over all processes
    _share_buffers(run.net, run.ctx)
    with _averaged(run):
        val = evaluate(run.net, run.data.splits["val"], run.data.info, run.batch_size, run.device, run.ctx)
    row = {"epoch": epoch, "train_loss": total_loss / max(total_count, 1),
           f"train_{metric_name}": total_metric / max(total_count, 1),
           "val_loss": val["loss"], f"val_{metric_name}": val[metric_name],
           "seconds": round(time.perf_counter() - run.start_time, 2)}  # fmt: skip
    run.log(f"epoch {epoch}: train loss {row['train_loss']:.4f} {metric_name} {row[f'train_{metric_name}']:.4f} | "
            f"val loss {val['loss']:.4f} {metric_name} {val[metric_name]:.4f}")  # fmt: skip
    improved = _better(metric_name, val[metric_name], val["loss"], progress, run.cfg.get("select_by", "metric"))
    patience = int(run.cfg.get("patience") or 0)
    if improved:
        progress.update(best=val[metric_name], best_loss=val["loss"], best_epoch=epoch)
    elif patience and epoch - progress["best_epoch"] >= patience:
        progress["stopped_early"] = True
        criterion = "loss" if run.cfg.get("select_by") == "loss" else metric_name
        run.log(f"stopping early: no better validation {criterion} for {patience} epochs (best: epoch "
                f"{progress['best_epoch']})")  # fmt: skip
    progress.update(epoch=epoch + 1, batch=0, sums=[0.0, 0.0, 0], seconds=time.perf_counter() - run.start_time)
    run.runlog.epoch(row, progress["global_step"])
    return improved


# ---------------------------------------------------------------------------- run: checkpoint, summary
def _save(run: _Run, pointers: tuple[str, ...]) -> None:
    """Checkpoint the run and point `pointers` ("last", "best") at it. Every process must
    call it (the RNG states are gathered); only the main process writes."""
    rng = _rng_states(run.ctx)
    if run.ctx.main:
        run.runlog.flush()
        with _averaged(run) as live:
            checkpoint.save(run.ckpt_dir, run.net, run.optimizer, run.progress, pointers, rng, live)


def _finish(run: _Run) -> dict:
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


def check_classes(run_dir: Path, info: dict) -> None:
    """Raise ValueError unless the classes of the data just read are those the run was
    trained on (its classes.json), in the same order: a changed training file would
    otherwise rename the model's outputs. Runs written before classes.json pass."""
    path = Path(run_dir) / CLASSES_NAME
    if not path.is_file():
        return
    try:
        trained = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: damaged ({exc}); it lists the run's class names") from None
    now = labels.class_names(info)
    if trained != now:
        raise ValueError(f"{path}: the run was trained on classes {trained}, but its training data now has "
                         f"{now}; the data file changed since training")  # fmt: skip


def load_run(run_dir: str | Path, which: str = "best", defaults: dict | None = None) -> tuple[dict, torch.nn.Module, Data]:
    """(config, model with the `which` checkpoint's weights, data) of a run directory.

    config.yaml is validated (s5ssm.settings.read_run_config; `defaults`: the known
    options and their types)."""
    run_dir = Path(run_dir)
    cfg = settings.read_run_config(run_dir, defaults)
    data = load_data(cfg)
    if data.info["kind"] == "classification":
        check_classes(run_dir, data.info)
    model = build_model(cfg, data.info)
    ckpt_dir = run_dir / "checkpoints"
    checkpoint.restore(model, checkpoint.load_model(ckpt_dir, which), ckpt_dir, which)
    return cfg, model.eval(), data
