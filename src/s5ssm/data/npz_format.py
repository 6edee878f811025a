"""The reader of ``.npz`` archives (s5ssm.data.formats.load_file dispatches here).

``.npz`` (numpy archives, loaded with ``allow_pickle=False``)
---------------------------------------------------------------
Keys (no others are accepted):

- ``x``: the inputs, in one of these layouts
    * dense:        float (N, L, D) features or integer (N, L) tokens, all of length L;
    * concatenated: float (sum L_i, D) or integer (sum L_i,), with ``lengths``;
    * padded:       float (N, L_max, D) or integer (N, L_max), with ``lengths``
                    (values past each length are ignored).
  Integer ``x`` means token ids (>= 0); float ``x`` means features.
- ``lengths``: integer (N,), each >= 1; needed for the concatenated and padded layouts.
- ``y``: integer (N,) class labels (the classes are the sorted values that occur, named
  by their values, unless ``class_names`` names ids 0..K-1), string (N,) class names, float (N,) or
  (N, T) regression targets, or float (N, L_max, T) per-step regression targets.
- ``t`` (optional): float time stamps in the layout of ``x`` without D: (N, L),
  (sum L_i,) or (N, L_max); strictly increasing within each sequence.
- ``class_names`` (optional): string (K,) names of classes 0..K-1 (with integer ``y``)
  or the class order (with string ``y``; else string labels are sorted).
- ``vocab_size`` (optional): integer scalar, for token inputs.

Object arrays (anything that would need unpickling) are rejected. ``save_npz`` writes the
concatenated layout.

The reader checks what only the file can tell (keys, dtypes, the layout, labels against
class_names, token ids against vocab_size); SequenceDataset checks the values of the
sequences (finite, time stamps increasing, ...), and its errors are reported here by
npz key and sequence.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import SequenceDataset
from .format_base import DataFormatError, dataset_info

__all__ = ["read_npz", "NPZ_KEYS"]

NPZ_KEYS = ("x", "y", "lengths", "t", "class_names", "vocab_size")
# Token ids index an Embedding(vocab_size, H): 2^24 ids at H=128 are 8 GB of float32 already.
MAX_VOCAB = 2**24
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip file's first member, or an empty zip
# SequenceDataset's field names, as npz keys
_DATASET_FIELD_KEY = {"inputs": "x", "targets": "y", "timestamps": "t"}


def _npz_fail(path: Path, key: str | None, what: str) -> DataFormatError:
    where = f"{path}[{key}]" if key else f"{path}"
    return DataFormatError(f"{where}: {what}")


def _check_member_sizes(path: Path) -> None:
    """Refuse an .npz whose arrays declare more data than the file can hold, before any is
    allocated: each .npy header's shape and dtype must match its member's size, and the
    member's size must fit the archive (a deflated member expands at most ~1032 times)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise _npz_fail(path, None, f"not a readable .npz archive ({exc})") from None
    with archive:
        for member in archive.infolist():
            key = member.filename.removesuffix(".npy")
            limit = member.compress_size * (1 if member.compress_type == zipfile.ZIP_STORED else 1032) + 1024
            if member.compress_size > path.stat().st_size or member.file_size > limit:
                raise _npz_fail(path, key, f"declares {member.file_size} bytes, more than the archive can hold")
            try:
                with archive.open(member) as stream:
                    version = np.lib.format.read_magic(stream)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
                    if read_header is None:
                        continue  # left to numpy, which names the version it does not read
                    shape, _, dtype = read_header(stream)
                    header_size = stream.tell()
            except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise _npz_fail(path, key, f"cannot be read, truncated or corrupt archive ({exc})") from None
            declared = int(np.prod([int(n) for n in shape], dtype=object)) * dtype.itemsize
            if not dtype.hasobject and declared > member.file_size - header_size:
                raise _npz_fail(path, key, f"declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) but "
                                           f"holds {member.file_size - header_size:,} bytes: truncated or corrupt")  # fmt: skip


def read_npz(path: str | os.PathLike, *, require_targets: bool = True) -> tuple[SequenceDataset, dict]:
    """Read an ``.npz`` archive (never unpickling) in one of the layouts of the module docstring
    (without ``y`` when require_targets is False: zeros stand in for the targets)."""
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic not in ZIP_MAGIC and not magic.startswith(b"\x93NUM"):  # (.npy: refused below, by name)
        raise _npz_fail(path, None, f"not a readable .npz archive: an .npz is a zip file of .npy arrays, this file starts with {magic!r}")
    if magic in ZIP_MAGIC:
        _check_member_sizes(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise _npz_fail(path, None, f"not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _npz_fail(path, None, "holds a single array (.npy data), not an .npz archive with keys x, y")
    with archive:
        unknown = sorted(set(archive.files) - set(NPZ_KEYS))
        if unknown:
            raise _npz_fail(path, unknown[0], f"unexpected key; accepted keys are {', '.join(NPZ_KEYS)}")
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                    raise _npz_fail(
                        path,
                        key,
                        "is an object array (would need unpickling, which s5ssm never does); store numeric "
                        "arrays, e.g. variable-length data concatenated with a 'lengths' key",
                    ) from None
                raise _npz_fail(path, key, f"cannot be read ({exc})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise _npz_fail(path, key, f"cannot be read, truncated or corrupt archive ({exc})") from None
    if not require_targets and "y" not in arrays and "x" in arrays:
        count = arrays["lengths"].shape[0] if arrays.get("lengths") is not None else arrays["x"].shape[0]
        arrays["y"] = np.zeros(count, dtype=np.int64)
    for key in ("x", "y"):
        if key not in arrays:
            raise _npz_fail(path, key, f"missing required key {key!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    return _dataset_from_arrays(path, arrays)


def _dataset_from_arrays(path: Path, arrays: dict) -> tuple[SequenceDataset, dict]:
    """The dataset and info of an archive's arrays (the keys of the module docstring)."""
    x = arrays["x"]
    if x.dtype.kind == "b" or x.dtype.kind not in "fiu":
        raise _npz_fail(path, "x", f"dtype {x.dtype}; expected float features or integer token ids")
    layout, lengths = _layout(path, x, arrays.get("lengths"))
    inputs = _split(x, layout, lengths)
    if x.dtype.kind in "iu":
        _check_token_range(path, inputs)
    timestamps = _timestamps(path, arrays["t"], x, layout, lengths) if "t" in arrays else None
    class_names = _class_names(path, arrays["class_names"]) if "class_names" in arrays else None
    targets, class_names = _targets(path, arrays["y"], lengths, class_names)
    dataset = _dataset(path, inputs, targets, timestamps)
    vocab_size = _vocab_size(path, arrays["vocab_size"], dataset) if "vocab_size" in arrays else None
    info = dataset_info(dataset, class_names, format="npz", path=str(path), layout=layout, vocab_size=vocab_size)
    return dataset, info


def _layout(path: Path, x: np.ndarray, lengths: np.ndarray | None) -> tuple[str, np.ndarray]:
    """The layout of x ("dense", "concatenated" or "padded") and int64 (N,) lengths."""
    tokens = x.dtype.kind in "iu"
    seq_ndim = 1 if tokens else 2  # ndim of one sequence
    if lengths is None:
        if x.ndim != seq_ndim + 1:
            if tokens:
                raise _npz_fail(path, "x", f"integer tokens need shape (N, L) without 'lengths', got {x.shape}")
            raise _npz_fail(path, "x", f"float features need shape (N, L, D) without 'lengths', got {x.shape} "
                                       "(for univariate data add a trailing axis of size 1; for a concatenation "
                                       "give 'lengths')")  # fmt: skip
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise _npz_fail(path, "x", f"no data (shape {x.shape})")
        return "dense", np.full(x.shape[0], x.shape[1], dtype=np.int64)
    _check_lengths(path, lengths)
    lengths = lengths.astype(np.int64)
    if x.ndim == seq_ndim:
        if int(lengths.sum()) != x.shape[0]:
            raise _npz_fail(path, "lengths", f"sum to {int(lengths.sum())} but x has {x.shape[0]} rows "
                                             "(concatenated layout)")  # fmt: skip
        return "concatenated", lengths
    if x.ndim == seq_ndim + 1:
        if lengths.shape[0] != x.shape[0]:
            raise _npz_fail(path, "lengths", f"has {lengths.shape[0]} entries but x holds {x.shape[0]} sequences "
                                             "(padded layout)")  # fmt: skip
        if lengths.max() > x.shape[1]:
            i = int(np.argmax(lengths))
            raise _npz_fail(path, "lengths", f"sequence {i} has length {int(lengths[i])} > padded length {x.shape[1]}")
        return "padded", lengths
    want = "(sum L,) or (N, L_max)" if tokens else "(sum L, D) or (N, L_max, D)"
    raise _npz_fail(path, "x", f"shape {x.shape} does not fit {'tokens' if tokens else 'features'} with lengths: "
                               f"expected {want}")  # fmt: skip


def _check_lengths(path: Path, lengths: np.ndarray) -> None:
    """`lengths` must be a non-empty integer (N,) array of lengths >= 1."""
    if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
        raise _npz_fail(path, "lengths", f"expected integer (N,), got dtype {lengths.dtype} shape {lengths.shape}")
    if lengths.size == 0:
        raise _npz_fail(path, "lengths", "empty: no sequences")
    if lengths.min() < 1:
        i = int(np.argmin(lengths))
        raise _npz_fail(path, "lengths", f"sequence {i} has length {int(lengths[i])}; lengths must be >= 1")


def _split(array: np.ndarray, layout: str, lengths: np.ndarray) -> list[np.ndarray]:
    """The N sequences (views) of an array in `layout`: each (L_i, ...)."""
    if layout == "concatenated":
        return np.split(array, np.cumsum(lengths)[:-1])
    return [array[i, : lengths[i]] for i in range(len(lengths))]


def _check_token_range(path: Path, inputs: list[np.ndarray]) -> None:
    """No token id may exceed the largest vocabulary s5ssm builds (MAX_VOCAB)."""
    for i, seq in enumerate(inputs):
        if seq.max() >= MAX_VOCAB:
            raise _npz_fail(path, "x", f"sequence {i}: token id {int(seq.max())} is beyond the largest "
                                       f"vocabulary s5ssm builds ({MAX_VOCAB:,} ids)")  # fmt: skip


def _timestamps(path: Path, t: np.ndarray, x: np.ndarray, layout: str, lengths: np.ndarray) -> list[np.ndarray]:
    """The N time-stamp arrays of `t`, which has the layout of x without its D axis."""
    if t.dtype.kind not in "fiu" or t.dtype.kind == "b":
        raise _npz_fail(path, "t", f"dtype {t.dtype}; expected float time stamps")
    n = len(lengths)
    expected = (int(lengths.sum()),) if layout == "concatenated" else (n, int(x.shape[1]))
    if t.shape != expected:
        raise _npz_fail(path, "t", f"shape {t.shape} does not match x's {layout} layout; expected {expected}")
    return [s.astype(np.float64) for s in _split(t, layout, lengths)]


def _class_names(path: Path, names: np.ndarray) -> list[str]:
    """`class_names` as K distinct strings."""
    if names.ndim != 1 or names.dtype.kind not in "US" or names.size == 0:
        raise _npz_fail(path, "class_names", f"expected a non-empty 1-D string array, got dtype {names.dtype} "
                                             f"shape {names.shape}")  # fmt: skip
    class_names = [str(s) for s in names.astype(str)]
    if len(set(class_names)) != len(class_names):
        raise _npz_fail(path, "class_names", "contains duplicate names")
    return class_names


def _targets(path: Path, y: np.ndarray, lengths: np.ndarray, class_names: list[str] | None
             ) -> tuple[np.ndarray, list[str] | None]:  # fmt: skip
    """The targets of `y` (int64 (N,) classes or float32 regression) and the class names."""
    n = len(lengths)
    if y.shape[:1] != (n,):
        raise _npz_fail(path, "y", f"has {y.shape[0] if y.ndim else 0} targets (shape {y.shape}) for {n} sequences")
    if y.dtype.kind in "US":
        return _string_classes(path, y, class_names)
    if y.dtype.kind in "iub":
        return _integer_classes(path, y, class_names)
    if y.dtype.kind != "f":
        raise _npz_fail(path, "y", f"dtype {y.dtype}; expected integer or string class labels or float targets")
    if class_names is not None:
        raise _npz_fail(path, "class_names", "given with float (regression) targets")
    targets = y.astype(np.float32)  # a copy: the padding of per-step targets is zeroed
    if targets.ndim == 3:
        for i, length in enumerate(lengths):  # steps past a sequence's length are ignored
            targets[i, length:] = 0.0
    return targets, None


def _string_classes(path: Path, y: np.ndarray, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """String labels (N,) as int64 class ids, in class_names' order (else sorted)."""
    if y.ndim != 1:
        raise _npz_fail(path, "y", f"string class labels must be (N,), got shape {y.shape}")
    labels = [str(label) for label in y.astype(str).tolist()]
    if class_names is None:
        class_names = sorted(set(labels))
    index = {name: k for k, name in enumerate(class_names)}
    unknown = [i for i, label in enumerate(labels) if label not in index]
    if unknown:
        raise _npz_fail(path, "y", f"sequence {unknown[0]}: label {labels[unknown[0]]!r} is not in class_names")
    return np.fromiter((index[label] for label in labels), dtype=np.int64, count=len(labels)), class_names


def _integer_classes(path: Path, y: np.ndarray, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    """Integer labels (N,) as int64 class ids: ids into class_names, or (without them) the
    labels that occur, in sorted order, named by their values."""
    if y.ndim != 1:
        raise _npz_fail(path, "y", f"integer class labels must be (N,), got shape {y.shape}")
    targets = y.astype(np.int64)
    if targets.min() < 0:  # checked before the labels are renumbered below
        raise _npz_fail(path, "y", f"sequence {int(np.argmin(targets))}: class label {int(targets.min())} < 0")
    if class_names is None:
        values, inverse = np.unique(targets, return_inverse=True)
        return inverse.reshape(-1).astype(np.int64), [str(v) for v in values.tolist()]
    if targets.max() >= len(class_names):
        i = int(np.argmax(targets))
        raise _npz_fail(path, "y", f"sequence {i}: class label {int(targets[i])} but only {len(class_names)} "
                                   "class_names")  # fmt: skip
    return targets, class_names


def _dataset(path: Path, inputs: list, targets: np.ndarray, timestamps: list | None) -> SequenceDataset:
    """SequenceDataset(inputs, targets, timestamps), its checks reported by npz key and sequence."""
    try:
        return SequenceDataset(inputs, targets, timestamps)
    except ValueError as exc:
        raise _npz_fail(path, *_npz_place(str(exc))) from None


def _npz_place(message: str) -> tuple[str | None, str]:
    """A SequenceDataset message as (npz key, message): "inputs[3]: contains NaN or Inf"
    becomes ("x", "sequence 3: contains NaN or Inf")."""
    match = re.match(r"(inputs|targets|timestamps)(?:\[(\d+)\])?: (.*)", message, re.S)
    if match is None:
        return None, message
    field, index, what = match.groups()
    what = re.sub(r"\b(?:inputs|targets|timestamps)\[(\d+)\]", r"sequence \1", what)
    return _DATASET_FIELD_KEY[field], what if index is None else f"sequence {index}: {what}"


def _vocab_size(path: Path, v: np.ndarray, dataset: SequenceDataset) -> int:
    """`vocab_size`: an integer scalar above every token id of a token dataset."""
    if v.shape != () or v.dtype.kind not in "iu":
        raise _npz_fail(path, "vocab_size", f"expected an integer scalar, got dtype {v.dtype} shape {v.shape}")
    if not dataset.is_tokens:
        raise _npz_fail(path, "vocab_size", "given but x holds float features, not tokens")
    top = max(int(seq.max()) for seq in dataset.inputs)
    if top >= int(v):
        raise _npz_fail(path, "vocab_size", f"is {int(v)} but x holds token id {top}")
    return int(v)
