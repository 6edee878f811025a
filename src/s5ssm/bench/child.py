"""Measurements in a fresh interpreter: `python -m s5ssm.bench.<module> ARGS` whose last
line of output is its JSON result (peak memory per cell, the allocator settings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


class ChildFailed(RuntimeError):
    """The child timed out or exited non-zero; str: why, in one line; `stderr`: all of it."""

    def __init__(self, reason: str, stderr: str = "") -> None:
        super().__init__(reason)
        self.stderr = stderr


def run_child(module: str, args: list, env: dict[str, str], timeout_s: float) -> dict:
    """The JSON result of `python -m module *args` run with `env`, importing this same
    s5ssm (its package root goes first on PYTHONPATH). Raises ChildFailed."""
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(env, PYTHONPATH=os.pathsep.join([package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    try:
        out = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                             env=env, timeout=timeout_s)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"timed out after {timeout_s:.0f} s") from None
    if out.returncode != 0:
        tail = (out.stderr or "").strip().splitlines()[-1:] or [f"exit code {out.returncode}"]
        raise ChildFailed(tail[0], out.stderr or "")
    return json.loads(out.stdout.strip().splitlines()[-1])
