"""What every data file reader shares: its error type and the summary of what it read."""

from __future__ import annotations

from .dataset import SequenceDataset

__all__ = ["DataFormatError", "dataset_info"]


class DataFormatError(ValueError):
    """A data file is malformed, truncated or inconsistent; the message names file and line/key."""


def dataset_info(dataset: SequenceDataset, class_names: list[str] | None = None, **extra) -> dict:
    """The summary a trainer needs to build a model for `dataset` (its keys: s5ssm.data.formats)."""
    lengths = dataset.lengths
    classification = dataset.kind == "classification"
    if classification:
        num_classes = len(class_names) if class_names is not None else int(dataset.targets.max()) + 1
        output_dim = num_classes
    else:
        num_classes = None
        output_dim = int(dataset.targets.shape[-1])
    vocab_size = None
    if dataset.is_tokens:
        vocab_size = int(extra.pop("vocab_size", None) or (max(int(x.max()) for x in dataset.inputs) + 1))
    else:
        extra.pop("vocab_size", None)
    info = {
        "kind": dataset.kind,
        "num_classes": num_classes,
        "class_names": None if class_names is None else [str(c) for c in class_names],
        "input_dim": dataset.input_dim,
        "vocab_size": vocab_size,
        "output_dim": output_dim,
        "per_step": dataset.per_step,
        "num_sequences": len(dataset),
        "min_length": int(lengths.min()),
        "max_length": int(lengths.max()),
        "timestamps": dataset.timestamps is not None,
    }
    info.update(extra)
    return info

