"""Readers (and an .npz writer) for sequence data files, without pickle and without sktime.

``load_file(path)`` dispatches on the suffix and returns ``(SequenceDataset, info)``;
``info`` holds: format, path, kind ("classification" | "regression"), num_classes,
class_names (list[str] or None), input_dim (D, or None for tokens), vocab_size (tokens
only), output_dim (num_classes or T), per_step, num_sequences, min_length, max_length,
timestamps (bool). Every malformed, truncated or inconsistent file raises
:class:`DataFormatError` (a ValueError) whose message starts with the file and the line
(``file.ts:12: ...``) or the npz key (``file.npz[y]: ...``) and says what is wrong.

The formats, each read by its own module:

- UEA/UCR ``.ts`` (the sktime text format): s5ssm.data.ts_format;
- ``.npz`` (numpy archives, never unpickled): s5ssm.data.npz_format, which also lists
  the accepted keys and layouts. ``save_npz`` writes the concatenated layout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .dataset import SequenceDataset
from .format_base import DataFormatError, dataset_info
from .npz_format import read_npz
from .ts_format import read_ts

__all__ = ["DataFormatError", "load_file", "read_ts", "read_npz", "save_npz", "dataset_info"]


def load_file(path: str | os.PathLike, *, require_targets: bool = True, **options) -> tuple[SequenceDataset, dict]:
    """Read a ``.ts`` or ``.npz`` file into (SequenceDataset, info).

    Options: ``missing="interpolate"|"error"`` for ``.ts`` files (see s5ssm.data.ts_format).
    require_targets=False lets an ``.npz`` file omit ``y`` (inputs to predict on); its
    targets are then zeros, class 0 of one class. ``.ts`` files always carry labels.
    Raises FileNotFoundError for a missing file, DataFormatError for a bad one.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ts", ".npz"):
        raise DataFormatError(f"{path}: unknown data file suffix {path.suffix!r}; expected .ts or .npz")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if suffix == ".ts":
        return read_ts(path, **options)
    if options:
        raise TypeError(f"{path}: .npz files take no options, got {sorted(options)}")
    return read_npz(path, require_targets=require_targets)


def save_npz(
    dataset: SequenceDataset,
    path: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    vocab_size: int | None = None,
    compress: bool = False,
) -> None:
    """Write `dataset` as an ``.npz`` in the concatenated layout (x, lengths, y[, t]), atomically.

    ``read_npz`` reads it back exactly (float32 features or int64 tokens).
    """
    path = Path(path)
    arrays = {
        "x": np.concatenate(dataset.inputs, axis=0),
        "lengths": dataset.lengths,
        "y": dataset.targets,
    }
    if dataset.timestamps is not None:
        arrays["t"] = np.concatenate(dataset.timestamps)
    if class_names is not None:
        arrays["class_names"] = np.asarray([str(c) for c in class_names], dtype=str)
    if vocab_size is not None:
        arrays["vocab_size"] = np.asarray(int(vocab_size), dtype=np.int64)
    atomic_savez(path, arrays, compress=compress)


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, compress: bool = False) -> None:
    """np.savez into `path` atomically (see s5ssm.io.atomic_write)."""
    atomic_write(path, lambda handle: (np.savez_compressed if compress else np.savez)(handle, **arrays))
