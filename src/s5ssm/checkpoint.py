"""Training checkpoints: safetensors for tensors, JSON for the rest, never a torn file.

Layout under a run's `checkpoints/` directory:

    step-000000120/            one complete checkpoint
        model.safetensors      model.state_dict()
        optimizer.safetensors  the optimizer's per-parameter state tensors, the torch RNG
                               state of each process ("rng.torch" of rank 0, "rng.torch.R" of rank R)
                               and, when the model holds averaged weights (s5ssm.averaging), the
                               weights the optimizer moves ("live.NAME" for parameter NAME)
        state.json             optimizer param_groups, training progress (written last)
    last.json                  {"dir": "step-000000120"}: the pointer to the newest checkpoint
    best.json                  the same for the best validation metric
    previous.json              the same for the checkpoint before the newest (to recover from
                               a damaged one: the error message says how)

A checkpoint directory is complete before a pointer names it, and each pointer is replaced
atomically (s5ssm.io), so a process killed at any moment leaves every pointer naming a
complete checkpoint. Directories no pointer names are deleted after the pointers move.
Loading reads safetensors and JSON only: nothing is unpickled. A pointer is only followed to a
step-NNNNNNNNN directory beside it, never out of the run directory; a damaged file raises
CheckpointError (a ValueError) naming the file.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from .io import atomic_write_text, load_safetensors, save_safetensors

POINTERS = ("last", "best", "previous")
STEP_DIR = re.compile(r"step-\d{9}")
PROGRESS_KEYS = ("epoch", "batch", "global_step", "sums", "best", "best_epoch", "seconds")  # see s5ssm.training


class CheckpointError(ValueError):
    """A checkpoint file is damaged or missing; the message names it and how to recover."""


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


def save(
    root: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: dict,
    pointers: tuple[str, ...] = ("last",),
    rng_states: list[torch.Tensor] | None = None,
    live: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint for progress["global_step"] and point `pointers` at it.

    rng_states: the torch RNG state of every process of a data-parallel run, by rank
    (default: this process's alone). Save the unwrapped model, not a DistributedDataParallel.
    live: the parameters the optimizer moves, by name, when `model` holds their average.
    """
    root = Path(root)
    directory = root / f"step-{int(progress['global_step']):09d}"
    if not (directory / "state.json").is_file():  # best and last of one step share a directory
        if directory.exists():
            shutil.rmtree(directory)  # left incomplete by a crash
        tensors, meta = _flatten_optimizer(optimizer.state_dict())
        for rank, state in enumerate(rng_states or [torch.get_rng_state()]):
            tensors["rng.torch" + (f".{rank}" if rank else "")] = state
        tensors.update({f"live.{name}": value for name, value in (live or {}).items()})
        save_safetensors(model.state_dict(), directory / "model.safetensors")
        save_safetensors(tensors, directory / "optimizer.safetensors")
        atomic_write_text(directory / "state.json", json.dumps({"optimizer": meta, "progress": progress}, indent=1))
    last = _pointed_name(root, "last") if "last" in pointers else None
    if last is not None and last != directory.name:  # kept, to recover from a damaged newest checkpoint
        atomic_write_text(root / "previous.json", json.dumps({"dir": last}))
    for name in pointers:
        atomic_write_text(root / f"{name}.json", json.dumps({"dir": directory.name}))
    _prune(root)
    return directory


def _prune(root: Path) -> None:
    keep = {_pointed_name(root, name) for name in POINTERS if (root / f"{name}.json").is_file()}
    for entry in root.glob("step-*"):
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def _recovery(root: Path, damaged: str) -> str:
    """How to recover from the damaged checkpoint directory `damaged`: the one saved before it, when kept."""
    try:
        previous = _pointed_name(root, "previous")
    except CheckpointError:
        previous = None
    if previous in (None, damaged) or not (root / previous / "state.json").is_file():
        return "no earlier checkpoint is kept; start the run again in a new --run_dir"
    try:
        targets = [name for name in ("last", "best") if _pointed_name(root, name) == damaged] or ["last"]
    except CheckpointError:
        targets = ["last"]
    over = " and ".join(str(root / f"{name}.json") for name in targets)
    return f"the checkpoint before it is kept: copy {root / 'previous.json'} over {over} to resume from {previous}"


def _pointed_name(root: Path, name: str) -> str | None:
    """The directory name a pointer file holds (None: no such pointer); never a path out of root."""
    pointer = root / f"{name}.json"
    if not pointer.is_file():
        return None
    try:
        target = json.loads(pointer.read_text())["dir"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer}: damaged checkpoint pointer ({type(exc).__name__}: {exc})") from None
    if not isinstance(target, str) or not STEP_DIR.fullmatch(target):
        raise CheckpointError(f"{pointer}: names {target!r}, not a checkpoint directory step-NNNNNNNNN of {root} "
                              "(a pointer is never followed out of the run directory)")  # fmt: skip
    return target


def resolve(root: str | Path, name: str = "last") -> Path:
    """The checkpoint directory a pointer names (inside root; its state.json written)."""
    root = Path(root)
    pointer = root / f"{name}.json"
    target = _pointed_name(root, name)
    if target is None:
        raise FileNotFoundError(f"{pointer}: no {name!r} checkpoint")
    directory = root / target
    if not (directory / "state.json").is_file():
        raise FileNotFoundError(f"{directory}: incomplete checkpoint named by {pointer}; {_recovery(root, target)}")
    return directory


def _read(path: Path, read, root: Path):
    """read(path), any failure a CheckpointError naming the file and how to recover."""
    try:
        return read(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing from the checkpoint; {_recovery(root, path.parent.name)}") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError) as exc:
        detail = str(exc).removeprefix(f"{path}: ")
        raise CheckpointError(f"{path}: damaged ({detail}); {_recovery(root, path.parent.name)}") from None


def _state_json(path: Path) -> dict:
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict) or not isinstance(meta.get("progress"), dict) or "optimizer" not in meta:
        raise ValueError("expected the keys 'optimizer' and 'progress'")
    missing = [key for key in PROGRESS_KEYS if key not in meta["progress"]]
    if missing:
        raise ValueError(f"the training progress lacks {missing[0]!r}")
    return meta


def load_model(root: str | Path, name: str = "best") -> dict[str, torch.Tensor]:
    """The model state_dict of a checkpoint (no optimizer file needed: eval, predict)."""
    root = Path(root)
    return _read(resolve(root, name) / "model.safetensors", load_safetensors, root)


def load(root: str | Path, name: str = "last") -> dict:
    """{"model": state_dict, "optimizer": state_dict, "rng": [state per rank], "progress": dict,
    "live": the optimizer's own parameters by name when the model holds their average, else {}}.

    A damaged or missing file raises CheckpointError naming it and how to recover.
    """
    root = Path(root)
    directory = resolve(root, name)
    meta = _read(directory / "state.json", _state_json, root)
    tensors = _read(directory / "optimizer.safetensors", load_safetensors, root)
    if "rng.torch" not in tensors:
        raise CheckpointError(f"{directory / 'optimizer.safetensors'}: damaged (no 'rng.torch'); "
                              f"{_recovery(root, directory.name)}")  # fmt: skip
    rng = [tensors.pop("rng.torch")]
    while f"rng.torch.{len(rng)}" in tensors:
        rng.append(tensors.pop(f"rng.torch.{len(rng)}"))
    live = {name[len("live."):]: tensors.pop(name) for name in [n for n in tensors if n.startswith("live.")]}
    return {
        "model": load_model(root, name),
        "optimizer": _read(directory / "state.json", lambda _: _unflatten_optimizer(tensors, meta["optimizer"]), root),
        "rng": rng,
        "progress": meta["progress"],
        "live": live,
    }


def restore(module, state: dict, root: str | Path, name: str, what: str = "model.safetensors") -> None:
    """module.load_state_dict(state); a mismatch (another model's checkpoint, a damaged file) is a
    CheckpointError naming the checkpoint's file."""
    root = Path(root)
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        path = resolve(root, name) / what
        raise CheckpointError(f"{path}: does not fit this run's model ({str(exc).splitlines()[0]}); "
                              f"{_recovery(root, path.parent.name)}") from None  # fmt: skip
