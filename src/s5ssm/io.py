"""Atomic file writes and pickle-free tensor files.

A write goes to a temporary file in the same directory, is flushed and fsync'ed, then
renamed over the target (and the directory fsync'ed): a process killed at any moment
leaves either the old file or the new one, never a torn one. Tensors are stored with
safetensors, so loading never unpickles anything.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load as _load_bytes
from safetensors.torch import save as _save_bytes


def _umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Replace `path` with what `write(handle)` writes, atomically.

    Temp file in the same directory, flush, fsync, rename over `path`, fsync the directory.
    The file gets the permissions a plain open() would give it (0o666 less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes the file private; give it open()'s mode
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a flat dict of tensors as a safetensors file, atomically."""
    plain = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write_bytes(path, _save_bytes(plain, metadata=metadata))


def load_safetensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (no pickle) onto `device`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such safetensors file")
    try:
        tensors = _load_bytes(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError (and others)
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    return {name: t.to(device) for name, t in tensors.items()}
