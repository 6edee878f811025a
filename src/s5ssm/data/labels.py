"""The training split's vocabulary, applied to every other split of a run.

Each data file numbers its own classes (``.ts``: the order ``@classLabel`` declares them;
``.npz``: the sorted labels or its ``class_names``), so the same id may mean different
classes in two files. A run keeps the class names of its training split; every other
split is renumbered by name into them (:func:`conform`), and predictions are reported by
name. The inputs of every split must also fit the model built for the training split:
the same kind of targets, the same feature count, token ids inside the vocabulary.

    >>> import numpy as np
    >>> from s5ssm.data import SequenceDataset
    >>> test = SequenceDataset([np.zeros((2, 1), np.float32)] * 2, np.array([0, 1]))
    >>> test_info = {"kind": "classification", "class_names": ["b", "a"], "num_classes": 2,
    ...              "input_dim": 1, "vocab_size": None, "per_step": False, "output_dim": 2}
    >>> train_info = dict(test_info, class_names=["a", "b"])
    >>> conform(test, test_info, train_info, "TEST.ts").targets.tolist()
    [1, 0]
"""

from __future__ import annotations

import numpy as np

from .dataset import SequenceDataset
from .formats import DataFormatError

__all__ = ["class_names", "conform", "conform_inputs"]


def class_names(info: dict) -> list[str]:
    """The names of classes 0..K-1 of a classification info (K = num_classes).

    A file's info carries them (``class_names``); a built-in task's classes are named by
    their ids ("0", "1", ...).
    """
    names = info.get("class_names")
    if names is not None:
        return [str(name) for name in names]
    return [str(k) for k in range(int(info["num_classes"]))]


def conform_inputs(dataset: SequenceDataset, train_info: dict, source: str) -> None:
    """Raise DataFormatError (naming `source`) unless `dataset`'s inputs fit a model built
    for `train_info`: features (L, D) with the training D, or token ids (L,) below its
    vocab_size."""
    train_tokens = train_info.get("vocab_size") is not None
    if dataset.is_tokens != train_tokens:
        have = "integer token ids" if dataset.is_tokens else f"float features (D={dataset.input_dim})"
        want = "integer token ids" if train_tokens else f"float features (D={train_info['input_dim']})"
        raise DataFormatError(f"{source}: holds {have}, but the model was trained on {want}")
    if train_tokens:
        top = max(int(x.max()) for x in dataset.inputs)
        if top >= int(train_info["vocab_size"]):
            raise DataFormatError(
                f"{source}: token id {top} is outside the training vocabulary (vocab_size {train_info['vocab_size']})"
            )
    elif dataset.input_dim != train_info["input_dim"]:
        raise DataFormatError(
            f"{source}: has {dataset.input_dim} features per step, but the training data has {train_info['input_dim']}"
        )


def _check_targets(dataset: SequenceDataset, info: dict, train_info: dict, source: str) -> None:
    """Same kind of targets as the training split, and for regression the same shape."""
    if info["kind"] != train_info["kind"]:
        raise DataFormatError(f"{source}: holds {info['kind']} targets, but the training data holds {train_info['kind']}")
    if info["kind"] == "regression":
        if bool(info.get("per_step")) != bool(train_info.get("per_step")):
            what = {True: "per-step", False: "per-sequence"}
            raise DataFormatError(f"{source}: holds {what[bool(info.get('per_step'))]} targets, but the training data "
                                  f"holds {what[bool(train_info.get('per_step'))]} ones")  # fmt: skip
        if dataset.targets.shape[-1] != train_info["output_dim"]:
            raise DataFormatError(f"{source}: has {dataset.targets.shape[-1]} target values per "
                                  f"{'step' if info.get('per_step') else 'sequence'}, but the training data "
                                  f"has {train_info['output_dim']}")  # fmt: skip


def conform(dataset: SequenceDataset, info: dict, train_info: dict, source: str) -> SequenceDataset:
    """`dataset` (read with `info`) checked against the training split and, for classes,
    renumbered by name into the training vocabulary.

    Args:
        dataset: a split read from `source`; its class ids index ``class_names(info)``.
        info: that file's info (``load_file``).
        train_info: the training split's info: the vocabulary and the model's input.
        source: the file, named in every error.

    Returns:
        The same sequences with int64 (N,) class ids of ``class_names(train_info)`` (a
        regression split is returned unchanged). Raises DataFormatError for a class the
        training split does not have, another feature count, token ids outside the
        vocabulary, or another kind or shape of targets.
    """
    conform_inputs(dataset, train_info, source)
    _check_targets(dataset, info, train_info, source)
    if info["kind"] != "classification":
        return dataset
    vocabulary = {name: k for k, name in enumerate(class_names(train_info))}
    names = class_names(info)
    used = np.unique(dataset.targets)
    unseen = [names[k] for k in used if names[k] not in vocabulary]
    if unseen:
        raise DataFormatError(f"{source}: class {unseen[0]!r} is not a class of the training data "
                              f"({', '.join(vocabulary)}); the model cannot score it")  # fmt: skip
    table = np.array([vocabulary.get(name, -1) for name in names], dtype=np.int64)
    return SequenceDataset(dataset.inputs, table[dataset.targets], dataset.timestamps)
