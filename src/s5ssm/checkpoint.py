"""Training checkpoints: safetensors for tensors, JSON for the rest, never a torn file.

Layout under a run's `checkpoints/` directory:

    step-000000120/            one complete checkpoint
        model.safetensors      model.state_dict()
        optimizer.safetensors  the optimizer's per-parameter state tensors, and the torch RNG
                               state of each process ("rng.torch" of rank 0, "rng.torch.R" of rank R)
        state.json             optimizer param_groups, training progress (written last)
    last.json                  {"dir": "step-000000120"}: the pointer to the newest checkpoint
    best.json                  the same for the best validation metric

A checkpoint directory is complete before a pointer names it, and each pointer is replaced
atomically (s5ssm.io), so a process killed at any moment leaves every pointer naming a
complete checkpoint. Directories no pointer names are deleted after the pointers move.
Loading reads safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from .io import atomic_write_text, load_safetensors, save_safetensors

POINTERS = ("last", "best")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _crash_point(name: str) -> None:
    """Fault injection for the crash tests: SIGKILL this process at a named point."""
    if os.environ.get("S5SSM_KILL_AT") == name:
        os.kill(os.getpid(), 9)


def save(
    root: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict,
    pointers: tuple[str, ...] = ("last",),
    rng_states: list[torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint for progress["global_step"] and point `pointers` at it.

    rng_states: the torch RNG state of every process of a data-parallel run, by rank
    (default: this process's alone). Save the unwrapped model, not a DistributedDataParallel.
    """
    root = Path(root)
    directory = root / f"step-{int(progress['global_step']):09d}"
    if not (directory / "state.json").is_file():  # best and last of one step share a directory
        if directory.exists():
            shutil.rmtree(directory)  # left incomplete by a crash
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        for rank, state in enumerate(rng_states or [torch.get_rng_state()]):
            tensors["rng.torch" + (f".{rank}" if rank else "")] = state
        save_safetensors(model.state_dict(), directory / "model.safetensors")
        _crash_point("save")
        save_safetensors(tensors, directory / "optimizer.safetensors")
        atomic_write_text(directory / "state.json", json.dumps({"optimizer": meta, "progress": progress}, indent=1))
    for name in pointers:
        atomic_write_text(root / f"{name}.json", json.dumps({"dir": directory.name}))
    _prune(root)
    return directory


def _prune(root: Path) -> None:
    keep = {resolve(root, name).name for name in POINTERS if (root / f"{name}.json").is_file()}
    for entry in root.glob("step-*"):
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def resolve(root: str | Path, name: str = "last") -> Path:
    """The checkpoint directory a pointer names."""
    pointer = Path(root) / f"{name}.json"
    if not pointer.is_file():
        raise FileNotFoundError(f"{pointer}: no {name!r} checkpoint")
    directory = Path(root) / json.loads(pointer.read_text())["dir"]
    if not (directory / "state.json").is_file():
        raise FileNotFoundError(f"{directory}: incomplete checkpoint named by {pointer}")
    return directory


def load(root: str | Path, name: str = "last") -> dict:
    """{"model": state_dict, "optimizer": state_dict, "rng": [state per rank], "progress": dict}."""
    directory = resolve(root, name)
    meta = json.loads((directory / "state.json").read_text())
    tensors = load_safetensors(directory / "optimizer.safetensors")
    rng = [tensors.pop("rng.torch")]
    while f"rng.torch.{len(rng)}" in tensors:
        rng.append(tensors.pop(f"rng.torch.{len(rng)}"))
    return {
        "model": load_safetensors(directory / "model.safetensors"),
        "optimizer": _unflatten_optimizer(tensors, meta["optimizer"]),
        "rng": rng,
        "progress": meta["progress"],
    }
