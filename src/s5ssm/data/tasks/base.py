"""The Task description shared by the built-in generated tasks, size presets and the disk cache.

A task module defines a ``build(**options) -> Task``. ``Task.make(seed, size, **options)``
resolves the options (task defaults < size preset < options bound by ``get_task`` <
options given to ``make``), the split sizes, then calls the module's generator, which
returns ``{"train", "val", "test"}`` SequenceDatasets. Each split draws from its own
random stream, ``numpy.random.default_rng([seed, SPLIT_STREAM[split], ...])``, so the
validation and test sets do not change when only the training size changes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dataset import SequenceDataset
from ..formats import atomic_savez

__all__ = [
    "Task",
    "model_defaults",
    "SPLITS",
    "SPLIT_STREAM",
    "split_rng",
    "default_cache_dir",
    "cached_arrays",
    "equal_length_inputs",
]

SPLITS = ("train", "val", "test")
SPLIT_STREAM = {"train": 0, "val": 1, "test": 2}
KINDS = ("classification", "regression")
METRICS = ("accuracy", "mse")

# The S5Model settings every built-in task starts from; a task states only what it changes.
SHARED_MODEL_DEFAULTS = {
    "dropout": 0.0,
    "norm": "batch",
    "prenorm": True,
    "activation": "half_glu1",
    "bidirectional": False,
    "C_init": "trunc_standard_normal",
    "dt_min": 0.001,
    "dt_max": 0.1,
    "clip_eigs": False,
}
# The sizes and the pooling are always a task's own; MODEL_KEY_ORDER is the order of a
# task's model_defaults (after any key outside it, such as encoder).
TASK_MODEL_KEYS = ("hidden_size", "state_size", "blocks", "num_layers", "pooling")
MODEL_KEY_ORDER = ("hidden_size", "state_size", "blocks", "num_layers", "dropout", "pooling", "norm", "prenorm",
                   "activation", "bidirectional", "C_init", "dt_min", "dt_max", "clip_eigs")  # fmt: skip


def model_defaults(**settings) -> dict:
    """A task's S5Model keyword arguments: SHARED_MODEL_DEFAULTS updated by `settings`.

    `settings` must give every TASK_MODEL_KEYS entry. Keys outside MODEL_KEY_ORDER come
    first, then MODEL_KEY_ORDER's keys in that order.
    """
    missing = [key for key in TASK_MODEL_KEYS if key not in settings]
    if missing:
        raise ValueError(f"model_defaults: a task must give its own {', '.join(missing)}")
    merged = {**SHARED_MODEL_DEFAULTS, **settings}
    extra = {key: value for key, value in settings.items() if key not in MODEL_KEY_ORDER}
    return {**extra, **{key: merged[key] for key in MODEL_KEY_ORDER}}


def split_rng(seed: int, split: str, *extra: int) -> np.random.Generator:
    """The independent random stream of one split of one task."""
    return np.random.default_rng([int(seed), SPLIT_STREAM[split], *extra])


def default_cache_dir() -> Path:
    """$S5SSM_CACHE, else $XDG_CACHE_HOME/s5ssm, else ~/.cache/s5ssm."""
    if os.environ.get("S5SSM_CACHE"):
        return Path(os.environ["S5SSM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "s5ssm"


def equal_length_inputs(array: np.ndarray) -> list[np.ndarray]:
    """Split an (N, L, ...) array into N views (no copies) for SequenceDataset.inputs."""
    return list(array)


def cached_arrays(
    task: str,
    params: Mapping,
    build: Callable[[], dict[str, np.ndarray]],
    cache_dir: str | os.PathLike | None,
) -> dict[str, np.ndarray]:
    """Return ``build()``'s flat dict of arrays, stored in (and re-read from) an .npz cache.

    The file is ``<cache_dir>/<task>/<sha256 of params>.npz``, written atomically and read
    with ``allow_pickle=False``; ``params`` must hold every generator parameter, the seed,
    the split sizes and the generator version. ``cache_dir=None`` disables the cache.
    """
    if cache_dir is None:
        return build()
    key = hashlib.sha256(json.dumps({"task": task, **params}, sort_keys=True, default=str).encode()).hexdigest()[:24]
    path = Path(cache_dir).expanduser() / task / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (OSError, ValueError, EOFError) as exc:  # a corrupt cache entry is rebuilt
            import warnings

            warnings.warn(f"{path}: unreadable cache entry ({exc}); regenerating", stacklevel=2)
    arrays = build()
    atomic_savez(path, arrays)
    (path.parent / f"{key}.json").write_text(
        json.dumps({"task": task, **params}, sort_keys=True, default=str, indent=1)
    )
    return arrays


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


@dataclass
class Task:
    """A built-in task: what it is, how to model it, and how to generate its splits.

    Attributes:
        name, description: registry name and a one-line description.
        kind: "classification" | "regression".
        metric: "accuracy" | "mse".
        output_dim: number of classes, or regression target size T.
        input_dim: features per step D (float inputs), or None for token inputs.
        vocab_size: number of token ids (token inputs), or None.
        per_step: True when the targets are per step, (N, L, T): use pooling "none" and
            a loss over the valid (mask) steps; else one target per sequence.
        model_defaults: S5Model keyword arguments that suit the task.
        train_defaults: epochs, batch_size, ssm_lr, lr_factor, weight_decay, warmup_epochs.
        options: the generator options in force (defaults updated by get_task's options).
        sizes: named sizes, name -> {"splits": (n_train, n_val, n_test), "options": {...}}.
        structural_options: options that change input_dim / vocab_size / output_dim;
            they can only be set through get_task, not make.
    """

    name: str
    description: str
    kind: str
    metric: str
    output_dim: int
    generator: Callable[..., dict[str, SequenceDataset]] = field(repr=False)
    input_dim: int | None = None
    vocab_size: int | None = None
    per_step: bool = False
    model_defaults: dict = field(default_factory=dict)
    train_defaults: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    bound_options: dict = field(default_factory=dict, repr=False)
    sizes: dict = field(default_factory=dict)
    structural_options: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {self.metric!r}")
        if (self.input_dim is None) == (self.vocab_size is None):
            raise ValueError("give exactly one of input_dim and vocab_size")

    @property
    def info(self) -> dict:
        """The same summary keys as ``load_file``'s info (kind, num_classes, input_dim, ...)."""
        classification = self.kind == "classification"
        return {
            "task": self.name,
            "kind": self.kind,
            "metric": self.metric,
            "num_classes": self.output_dim if classification else None,
            "class_names": None,
            "input_dim": self.input_dim,
            "vocab_size": self.vocab_size,
            "output_dim": self.output_dim,
            "per_step": self.per_step,
        }

    def resolve(self, size="default", **options) -> tuple[dict[str, int], dict]:
        """The split sizes and the full option dict that ``make(seed, size, **options)`` uses."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name}: unknown option {unknown[0]!r}; options are {sorted(self.options)}")
        for key in self.structural_options:
            if key in options and options[key] != self.options[key]:
                raise ValueError(
                    f"{self.name}: option {key!r} changes the model's input/output sizes; "
                    f"pass it to get_task({self.name!r}, {key}=...) instead of make()"
                )
        if isinstance(size, str) and size not in self.sizes and size.count(",") == 2:
            try:  # "n_train,n_val,n_test", as the command line gives it
                size = tuple(int(part) for part in size.split(","))
            except ValueError:
                raise ValueError(f"{self.name}: size {size!r} is not three integers n_train,n_val,n_test") from None
        if isinstance(size, str):
            if size not in self.sizes:
                raise ValueError(
                    f"{self.name}: unknown size {size!r}; named sizes are {sorted(self.sizes)} (or give (n_train, n_val, n_test))"
                )
            preset = self.sizes[size]
            counts = tuple(preset["splits"])
            preset_options = dict(preset.get("options", {}))
        else:
            if isinstance(size, Mapping):
                missing = [s for s in SPLITS if s not in size]
                extra = [s for s in size if s not in SPLITS]
                if missing or extra:
                    raise ValueError(f"{self.name}: size dict needs exactly the keys {SPLITS}, got {sorted(size)}")
                counts = tuple(size[s] for s in SPLITS)
            else:
                counts = tuple(size)
                if len(counts) != 3:
                    raise ValueError(f"{self.name}: size must be a name or (n_train, n_val, n_test), got {size!r}")
            preset_options = {}
        for split, count in zip(SPLITS, counts):
            if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
                raise ValueError(f"{self.name}: size of split {split!r} must be a positive int, got {count!r}")
        resolved = dict(self.options)
        resolved.update({k: v for k, v in preset_options.items() if k not in self.bound_options})
        resolved.update(options)
        return dict(zip(SPLITS, (int(c) for c in counts))), resolved

    def make(self, seed: int = 0, size="default", **options) -> dict[str, SequenceDataset]:
        """Generate the splits: {"train", "val", "test"} -> SequenceDataset, deterministic in `seed`.

        Args:
            seed: non-negative int; the same seed gives identical arrays.
            size: a named size ("default", "tiny", ...), a dict {"train": n, "val": n,
                "test": n}, a tuple (n_train, n_val, n_test) or the string "n_train,n_val,n_test". Named sizes may also set
                options (e.g. "tiny" uses short sequences); explicit options win.
            **options: generator options (see ``task.options`` and the task's module).
        """
        seed = _check_seed(seed)
        counts, resolved = self.resolve(size, **options)
        return self.generator(seed, counts, **resolved)
