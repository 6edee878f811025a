"""The data of a run: its train/val/test splits, and the class names it was trained on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data import SequenceDataset, get_task, labels, load_file, seeded_split

CLASSES_NAME = "classes.json"  # the class names a classification run was trained on, in output order

@dataclass
class Data:
    """The splits of a run by name ("train", "val", "test") and what the model needs to know of them."""

    splits: dict[str, SequenceDataset]
    info: dict  # kind, metric, input_dim | vocab_size, output_dim, per_step, ...


def _test_sibling(path: Path) -> Path | None:
    """The test file beside a training file (X_TRAIN.ts -> X_TEST.ts, x-train.npz -> x-test.npz), if it exists."""
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

