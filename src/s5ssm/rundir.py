"""A run directory in use: one run at a time, no leftovers of a run that never checkpointed,
and Ctrl-C that stops at a checkpoint.

- :func:`locked` holds an exclusive lock on ``RUN_DIR/.lock`` (``fcntl.flock``; on Windows
  ``msvcrt.locking``) for the whole run; a second run into the directory fails at once
  with :class:`RunDirBusy`. The operating system drops the lock when the process ends,
  however it ends, so a killed run never leaves the directory locked.
- :func:`start_clean` removes what a run that stopped before its first checkpoint wrote
  (metric rows, events, plots, incomplete checkpoints), so a new run does not append to
  them.
- :class:`StopOnInterrupt` turns Ctrl-C during training into a request the training loop
  honours after the current step: it saves a checkpoint and raises :class:`Interrupted`,
  which says how to resume. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["RunDirBusy", "Interrupted", "locked", "start_clean", "StopOnInterrupt"]

LOCK_NAME = ".lock"
# What a run writes besides config.yaml (see s5ssm.training): removed by start_clean.
RUN_OUTPUTS = ("metrics_steps.csv", "metrics_epochs.csv", "summary.json", "curves.png", "tensorboard", "checkpoints",
               "classes.json")  # fmt: skip
METRICS = ("metrics_steps.csv", "metrics_epochs.csv")


class RunDirBusy(FileExistsError):
    """Another process is running in this run directory."""


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving a checkpoint."""

    def __init__(self, run_dir: Path, step: int) -> None:
        super().__init__(f"interrupted: saved a checkpoint of {run_dir} at step {step}; "
                         f"continue with: s5ssm train --resume {run_dir}")  # fmt: skip


def _try_lock(handle) -> bool:
    """Take the exclusive lock of an open file without waiting; False if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held by another process
        return False
    return True


@contextmanager
def locked(run_dir: str | Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the duration of the block (creating the directory).

    Raises RunDirBusy, naming the directory and the process holding it, when another run
    holds the lock.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a+")
    if not _try_lock(handle):
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirBusy(f"{run_dir}: in use by another s5ssm run (process {holder}); wait for it to finish "
                         "or give another --run_dir")  # fmt: skip
    try:
        handle.truncate(0)  # whose lock it is, for the message above
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()  # closing the file releases the lock


def start_clean(run_dir: str | Path, log: Callable[[str], object]) -> None:
    """Remove the outputs of a run in `run_dir` that stopped before its first checkpoint.

    Only a directory holding metric rows but no checkpoint pointer is touched, and only
    the files a run writes (RUN_OUTPUTS) are removed; `log` says which.
    """
    run_dir = Path(run_dir)
    if (run_dir / "checkpoints" / "last.json").exists() or not any((run_dir / m).exists() for m in METRICS):
        return
    removed = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    for name in removed:
        path = run_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    log(f"{run_dir}: the run there stopped before its first checkpoint; starting afresh (removed {', '.join(removed)})")


class StopOnInterrupt:
    """Within the block, Ctrl-C sets `requested` instead of raising KeyboardInterrupt (once:
    a second Ctrl-C raises at once). Inactive (Ctrl-C raises as usual) when `active` is
    False or outside the main thread, where no signal handler can be installed."""

    def __init__(self, active: bool = True) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __enter__(self) -> StopOnInterrupt:
        if self.active:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)
