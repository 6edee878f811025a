"""A run's checkpoints: saving one (every process's RNG state, the averaged weights) and
loading the last one into a resumed run."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from .. import checkpoint, distributed
from ..io import atomic_write_text
from .run import Run


def save(run: Run, pointers: tuple[str, ...]) -> None:
    """Checkpoint the run and point `pointers` ("last", "best") at it. Every process must
    call it (the RNG states are gathered); only the main process writes."""
    rng = distributed.rng_states(run.ctx)
    if run.ctx.main:
        run.runlog.flush()
        with run.averaged() as live:
            checkpoint.save(run.ckpt_dir, run.net, run.optimizer, run.progress, pointers, rng, live)


def resume_state(cfg: dict, run_dir: Path, ctx: distributed.Context, net: torch.nn.Module,
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
