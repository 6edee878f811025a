"""`python -m s5ssm` with a SIGKILL injected, for the crash and resume tests.

    python tests/helpers/crashing_cli.py step=N ARGS...   killed right after training step N
                                                          (1-based, its metrics row written)
    python tests/helpers/crashing_cli.py save ARGS...     killed inside a checkpoint save, after
                                                          its model file, before its optimizer file

ARGS are the s5ssm command line. Under torchrun every process runs this script and is
killed at the same point. The faults are injected by wrapping s5ssm functions here, so
the library itself carries no test hook.
"""

from __future__ import annotations

import functools
import os
import runpy
import signal
import sys
from pathlib import Path


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_after_step(step: int) -> None:
    """Kill this process once the trainer has logged training step `step` (1-based)."""
    from s5ssm.training.runlog import RunLog

    log_step = RunLog.step

    @functools.wraps(log_step)
    def step_then_maybe_die(self, row: dict) -> None:
        log_step(self, row)
        if row["step"] == step:
            _kill()

    RunLog.step = step_then_maybe_die


def kill_inside_save() -> None:
    """Kill this process when a checkpoint save is about to write its optimizer file."""
    from s5ssm import checkpoint

    write = checkpoint.save_safetensors

    @functools.wraps(write)
    def write_or_die(tensors, path, *args, **kwargs):
        if Path(path).name == "optimizer.safetensors":
            _kill()
        return write(tensors, path, *args, **kwargs)

    checkpoint.save_safetensors = write_or_die


def main(argv: list[str]) -> None:
    """Install the fault named by argv[0], then run the s5ssm command line on argv[1:]."""
    if not argv or not (argv[0] == "save" or argv[0].startswith("step=")):
        raise SystemExit(f"usage: {Path(__file__).name} step=N|save ARGS... (got {argv[:1]})")
    if argv[0] == "save":
        kill_inside_save()
    else:
        kill_after_step(int(argv[0].removeprefix("step=")))
    sys.argv = ["s5ssm", *argv[1:]]
    runpy.run_module("s5ssm", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
