"""Built-in tasks, generated deterministically from a seed (nothing is downloaded).

    >>> from s5ssm.data.tasks import get_task, list_tasks
    >>> task = get_task("adding", length=100)
    >>> splits = task.make(seed=0, size="tiny")          # {"train", "val", "test"}
    >>> task.kind, task.metric, task.input_dim, task.output_dim
    ('regression', 'mse', 2, 1)

Each task module documents its generator, options, sizes and splits.
"""

from __future__ import annotations

from . import adding, copying, digits, listops, pathfinder, pendulum
from .base import SPLITS, Task, default_cache_dir

__all__ = ["Task", "get_task", "list_tasks", "TASKS", "SPLITS", "default_cache_dir"]

TASKS = {module.NAME: module for module in (adding, copying, digits, listops, pendulum, pathfinder)}


def get_task(name: str, **options) -> Task:
    """The Task `name` with its generator options set (see the task's module for them).

    Raises ValueError for an unknown task or option.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; built-in tasks are {', '.join(sorted(TASKS))}")
    module = TASKS[name]
    unknown = sorted(set(options) - set(module.DEFAULT_OPTIONS))
    if unknown:
        raise ValueError(f"{name}: unknown option {unknown[0]!r}; options are {sorted(module.DEFAULT_OPTIONS)}")
    return module.build(**options)


def list_tasks() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in task, sorted by name."""
    return [(name, TASKS[name].build().description) for name in sorted(TASKS)]
