"""Validation of every training setting, one function for every source of settings.

The command line, a ``--config`` file and a run directory's ``config.yaml`` all pass
through :func:`validate`: each value has the type of its default and lies in its range,
and the settings that depend on each other agree (warmup within the epochs, lr_min below
the learning rates, dt_min below dt_max). A refusal is a :class:`SettingError` (a
ValueError) whose message starts with where the value came from and names the key:

    >>> validate({"ssm_lr": -1.0}, name=lambda key: f"--{key}")
    Traceback (most recent call last):
    ...
    s5ssm.settings.SettingError: --ssm_lr must be > 0, got -1.0

:func:`read_run_config` reads and validates a run directory's ``config.yaml``;
:func:`resume_config` decides which settings a resumed run may change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import yaml

from .ssm import MAX_STEP_SCALE

__all__ = ["SettingError", "validate", "read_run_config", "resume_config", "OPT_CONFIGS", "RESUMABLE"]

OPT_CONFIGS = ("standard", "BandCdecay", "BfastandCdecay", "noBCdecay")
MODELS = ("s5", "lstm", "gru")
SEED_LIMIT = 2**32  # numpy and torch both take seeds below this (seed + 1 is used too)
# A resumed run may change these: they do not change what was trained on or the model.
RESUMABLE = ("epochs", "quiet", "device", "checkpoint_every")
# Keys a run directory's config.yaml must hold: what the trainer reads without a default.
REQUIRED = ("model", "seed", "epochs", "batch_size", "ssm_lr", "lr_factor", "weight_decay", "warmup_epochs",
            "lr_min", "grad_clip", "opt_config", "dt_global", "device", "checkpoint_every", "quiet",
            "hidden_size", "num_layers", "dropout", "pooling")  # fmt: skip


class SettingError(ValueError):
    """A setting has the wrong type, lies outside its range or contradicts another one."""


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _finite(low: float, *, strict: bool = False, high: float | None = None, open_high: bool = False,
            integer: bool = False):  # fmt: skip
    """A rule: a finite number (an int when `integer`) >= low (> low when strict), <= high
    (< high when open_high)."""

    def rule(value) -> str | None:
        kinds = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"must be {'an integer' if integer else 'a number'}, got {'null' if value is None else repr(value)}"
        if not math.isfinite(value):
            return f"must be a finite number, got {value}"
        if value < low or (strict and value == low):
            return f"must be {'>' if strict else '>='} {_number(low)}, got {value}"
        if high is not None and (value > high or (open_high and value == high)):
            return f"must be {'<' if open_high else '<='} {_number(high)}, got {value}"
        return None

    return rule


def _one_of(choices: tuple) -> Callable:
    return lambda value: None if value in choices else f"must be one of {', '.join(choices)}, got {value!r}"


def _device(value) -> str | None:
    if not isinstance(value, str):
        return f"must be cpu, cuda or cuda:N, got {value!r}"
    try:
        kind = torch.device(value).type
    except (RuntimeError, TypeError, ValueError):
        kind = None
    if kind not in ("cpu", "cuda"):
        return f"must be cpu, cuda or cuda:N, got {value!r}"
    return None


def _image_shape(value) -> str | None:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
        return f"must be [height, width] (two positive integers) or null, got {value!r}"
    return None


def _odd_width(value) -> str | None:
    problem = _finite(1, integer=True)(value)
    return problem or (None if value % 2 else f"must be odd (a window centred on its step), got {value}")


def _mapping(value) -> str | None:
    return None if isinstance(value, Mapping) else f"must be a mapping of task option names to values, got {value!r}"


RULES: dict[str, Callable[[object], str | None]] = {
    "model": _one_of(MODELS),
    "seed": _finite(0, high=SEED_LIMIT, open_high=True, integer=True),
    "epochs": _finite(1, integer=True),
    "batch_size": _finite(1, integer=True),
    "ssm_lr": _finite(0, strict=True),
    "lr_factor": _finite(0, strict=True),
    "weight_decay": _finite(0),
    "warmup_epochs": _finite(0, integer=True),
    "lr_min": _finite(0),
    "grad_clip": _finite(0),
    "checkpoint_every": _finite(0, integer=True),
    "opt_config": _one_of(OPT_CONFIGS),
    "device": _device,
    "task_options": _mapping,
    "hidden_size": _finite(1, integer=True),
    "state_size": _finite(1, integer=True),
    "num_layers": _finite(1, integer=True),
    "blocks": _finite(1, integer=True),
    "dropout": _finite(0, high=1, open_high=True),
    "bn_momentum": _finite(0, high=1),
    "dt_min": _finite(0, strict=True),
    "dt_max": _finite(0, strict=True),
    "step_rescale": _finite(0, strict=True, high=MAX_STEP_SCALE),
    "image_shape": _image_shape,
    "encoder_width": _odd_width,
    "patience": _finite(0, integer=True),
    "ema": _finite(0, high=1, open_high=True),
    "select_by": _one_of(("metric", "loss")),
    "val_fraction": _finite(0, strict=True, high=1, open_high=True),
}
NULLABLE = ("task", "data", "test_data", "task_options", "image_shape")  # null: not given
TYPES = {"task": str, "data": str, "test_data": str}  # options whose default (None) does not give the type


def _type_problem(value, expected: type) -> str | None:
    """Why `value` is not of the `expected` type (an int is a float; a bool is not an int)."""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if isinstance(value, expected) and not (expected is int and isinstance(value, bool)):
        return None
    shown = "null" if value is None else repr(value)
    article = "an" if expected.__name__[0] in "aeiou" else "a"
    return f"must be {article} {expected.__name__}, got {shown}"


def _value_problem(key: str, value, defaults: Mapping | None) -> str | None:
    """What is wrong with one setting (None: nothing)."""
    default = (defaults or {}).get(key)
    if value is None and (key in NULLABLE or (default is None and key not in RULES)):
        return None  # unset: the option's default (or the task's) applies
    problem = _type_problem(value, type(default)) if default is not None else None
    if problem is None and key in TYPES:
        problem = _type_problem(value, TYPES[key])
    if problem is None and key in RULES:
        problem = RULES[key](value)
    return problem


def _cross_problems(cfg: Mapping) -> list[tuple[str, str]]:
    """(key, problem) for settings that contradict each other; only the keys present count."""
    problems = []
    if "warmup_epochs" in cfg and "epochs" in cfg and cfg["warmup_epochs"] > cfg["epochs"]:
        problems.append(("warmup_epochs", f"must be <= epochs ({cfg['epochs']}), got {cfg['warmup_epochs']}"))
    if "lr_min" in cfg and "ssm_lr" in cfg:
        lowest = cfg["ssm_lr"] * min(1.0, cfg.get("lr_factor", 1.0))
        if cfg["lr_min"] > lowest:
            problems.append(("lr_min", f"must not exceed the learning rates (ssm_lr {cfg['ssm_lr']}, lr_factor "
                                       f"{cfg.get('lr_factor', 1.0)}: at most {lowest:g}), got {cfg['lr_min']}"))  # fmt: skip
    if "dt_min" in cfg and "dt_max" in cfg and cfg["dt_min"] > cfg["dt_max"]:
        problems.append(("dt_min", f"must be <= dt_max ({cfg['dt_max']}), got {cfg['dt_min']}"))
    return problems


def validate(values: Mapping, defaults: Mapping | None = None, name: Callable[[str], str] = str) -> None:
    """Raise SettingError unless every setting in `values` is valid.

    Args:
        values: option name -> value (a partial set is fine: cross-checks use the keys present).
        defaults: the options and their defaults; when given, a key not in it (nor
            task_options) is refused and each value must have its default's type.
        name: how to name a key in a message, e.g. ``lambda k: f"--{k}"``.
    """
    if defaults is not None:
        for key in values:
            if key not in defaults and key != "task_options":
                raise SettingError(f"{name(key)}: unknown option {key!r}")
    for key, value in values.items():
        problem = _value_problem(key, value, defaults)
        if problem:
            raise SettingError(f"{name(key)} {problem}")
    for key, problem in _cross_problems(values):
        raise SettingError(f"{name(key)} {problem}")


def read_run_config(run_dir: str | Path, defaults: Mapping | None = None) -> dict:
    """A run directory's config.yaml, parsed as plain YAML and validated (see `validate`).

    Raises FileNotFoundError without config.yaml, SettingError (naming the file and the
    key) for a file that is not a mapping of settings, misses a required key or holds a
    bad value.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no config.yaml)")
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SettingError(f"{path}: not a plain YAML file of settings ({exc})") from None
    if not isinstance(values, dict):
        raise SettingError(f"{path}: expected a mapping of option names to values, got {type(values).__name__}")
    missing = [key for key in REQUIRED if key not in values]
    if missing:
        raise SettingError(f"{path}: missing the setting {missing[0]!r} (this file is written by s5ssm train)")
    if not values.get("task") and not values.get("data"):
        raise SettingError(f"{path}: names neither a task nor data")
    validate(values, defaults, name=lambda key: f"{path}: {key}")
    return values


def resume_config(saved: dict, given: Mapping, run_dir: str | Path) -> dict:
    """The settings of a resumed run: the saved ones, with the RESUMABLE settings in `given`.

    A given value equal to the saved one is fine; another value for any other setting is
    refused, naming the flag (a resumed run keeps its data and model). epochs may grow
    (or shrink down to the epochs already trained: `completed` is checked by the trainer).
    """
    for key, value in given.items():
        if key not in RESUMABLE and saved.get(key) != value:
            raise SettingError(f"--resume {run_dir}: --{key} {value} differs from the run's {saved.get(key)!r}; "
                               f"a resumed run keeps its data, model and training settings (only "
                               f"{', '.join('--' + k for k in RESUMABLE)} may change)")  # fmt: skip
    cfg = {**saved, **{k: v for k, v in given.items() if k in RESUMABLE}}
    validate(cfg, name=lambda key: f"--{key}")
    return cfg
