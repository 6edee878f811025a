"""Readers (and an .npz writer) for sequence data files, without pickle and without sktime.

``load_file(path)`` dispatches on the suffix and returns ``(SequenceDataset, info)``;
``info`` holds: format, path, kind ("classification" | "regression"), num_classes,
class_names (list[str] or None), input_dim (D, or None for tokens), vocab_size (tokens
only), output_dim (num_classes or T), per_step, num_sequences, min_length, max_length,
timestamps (bool). Every malformed, truncated or inconsistent file raises
:class:`DataFormatError` (a ValueError) whose message starts with the file and the line
(``file.ts:12: ...``) or the npz key (``file.npz[y]: ...``) and says what is wrong.

UEA/UCR ``.ts`` (the sktime text format)
---------------------------------------
Header lines before ``@data``: ``@problemName``, ``@timeStamps true|false``,
``@missing true|false``, ``@univariate true|false``, ``@dimensions N``,
``@equalLength true|false``, ``@seriesLength N``, ``@classLabel true a b c`` (or
``false``), ``@targetLabel true|false``; keys are case-insensitive, lines starting
with ``#`` or ``%`` are comments. After ``@data`` one case per line: the dimensions
separated by ``:``, values within a dimension by ``,``, the label last (a label is
required). With ``@timeStamps true`` the values are
``(time,value)`` pairs (numbers or ISO dates, read as seconds); all dimensions of a case
must share their time stamps, which become the dataset's ``timestamps``.

- Class labels map to 0..K-1 in the order ``@classLabel`` declares them; the names are
  returned as ``info["class_names"]``. A label not declared is an error.
- ``@targetLabel true``: float regression targets, shape (N, 1).
- Unequal lengths across cases are fine (``@equalLength false``); the dimensions of one
  case must have equal lengths (the model reads (L, D) steps).
- Padding: unless ``@equalLength true``, steps at the end of a case that are missing in
  every dimension are padding of an unequal-length series and are dropped (counted in
  ``info["trimmed_padding"]``); they are not missing values.
- Missing values (``?`` or ``NaN``), policy ``missing="interpolate"`` (default): each
  dimension of each case is linearly interpolated over its valid points (over time
  stamps when present, else over the step index); leading and trailing gaps take the
  nearest valid value. A dimension with no valid value is an error. ``missing="error"``
  rejects any missing value. A missing value in a file whose header says
  ``@missing false`` is an error either way.

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
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..io import atomic_write
from .dataset import SequenceDataset

__all__ = ["DataFormatError", "load_file", "read_ts", "read_npz", "save_npz", "dataset_info"]

NPZ_KEYS = ("x", "y", "lengths", "t", "class_names", "vocab_size")
MISSING_POLICIES = ("interpolate", "error")
# Token ids index an Embedding(vocab_size, H): 2^24 ids at H=128 are 8 GB of float32 already.
MAX_VOCAB = 2**24
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip file's first member, or an empty zip


class DataFormatError(ValueError):
    """A data file is malformed, truncated or inconsistent; the message names file and line/key."""


# --------------------------------------------------------------------------- info
def dataset_info(dataset: SequenceDataset, class_names: list[str] | None = None, **extra) -> dict:
    """The summary a trainer needs to build a model for `dataset` (see the module docstring)."""
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


# --------------------------------------------------------------------------- dispatch
def load_file(path: str | os.PathLike, *, require_targets: bool = True, **options) -> tuple[SequenceDataset, dict]:
    """Read a ``.ts`` or ``.npz`` file into (SequenceDataset, info).

    Options: ``missing="interpolate"|"error"`` for ``.ts`` files (see the module docstring).
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


# --------------------------------------------------------------------------- .ts
_BOOL = {"true": True, "false": False}
_TUPLE = re.compile(r"\(([^()]*)\)")


def _split_top_level(text: str, sep: str = ":") -> list[str]:
    """Split on `sep` outside parentheses (time stamps such as 10:30:00 live inside them)."""
    parts, depth, start = [], 0, 0
    for k, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:k])
            start = k + 1
    parts.append(text[start:])
    return parts


def _parse_float(token: str) -> float:
    token = token.strip()
    if token == "?" or token.lower() == "nan":
        return float("nan")
    return float(token)


def _parse_time(token: str) -> float:
    token = token.strip()
    try:
        return float(token)
    except ValueError:
        pass
    stamp = _dt.datetime.fromisoformat(token)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=_dt.timezone.utc)
    return stamp.timestamp()


class _TsReader:
    def __init__(self, path: Path, missing: str):
        self.path = path
        self.missing = missing
        self.header: dict = {}
        self.class_names: list[str] | None = None
        self.class_index: dict[str, int] = {}
        self.n_dims: int | None = None
        self.inputs: list[np.ndarray] = []
        self.targets: list = []
        self.times: list[np.ndarray] = []
        self.missing_count = 0
        self.trimmed = 0

    def fail(self, line: int | None, what: str) -> DataFormatError:
        where = f"{self.path}:{line}" if line is not None else f"{self.path}"
        return DataFormatError(f"{where}: {what}")

    # header ---------------------------------------------------------------
    def _bool(self, ln: int, key: str, args: list[str]) -> bool:
        if not args or args[0].lower() not in _BOOL:
            raise self.fail(ln, f"{key} needs true or false, got {' '.join(args) or 'nothing'!r}")
        return _BOOL[args[0].lower()]

    def _int(self, ln: int, key: str, args: list[str]) -> int:
        try:
            value = int(args[0])
        except (IndexError, ValueError):
            raise self.fail(ln, f"{key} needs a positive integer, got {' '.join(args) or 'nothing'!r}") from None
        if value < 1:
            raise self.fail(ln, f"{key} needs a positive integer, got {value}")
        return value

    def header_line(self, ln: int, text: str) -> None:
        tokens = text.split()
        key, args = tokens[0].lower(), tokens[1:]
        if key in self.header and key != "@problemname":  # some archive files repeat the name
            raise self.fail(ln, f"duplicate header {tokens[0]}")
        if key == "@problemname":
            self.header[key] = " ".join(args)
        elif key in ("@timestamps", "@missing", "@univariate", "@equallength", "@targetlabel"):
            self.header[key] = self._bool(ln, tokens[0], args)
        elif key in ("@dimensions", "@dimension"):
            self.header["@dimensions"] = self._int(ln, tokens[0], args)
        elif key == "@serieslength":
            self.header[key] = self._int(ln, tokens[0], args)
        elif key == "@classlabel":
            has = self._bool(ln, tokens[0], args)
            self.header[key] = has
            if has:
                names = args[1:]
                if not names:
                    raise self.fail(ln, "@classLabel true must list the class names, e.g. '@classLabel true a b c'")
                if len(set(names)) != len(names):
                    dup = next(n for n in names if names.count(n) > 1)
                    raise self.fail(ln, f"@classLabel lists class {dup!r} twice")
                self.class_names = names
                self.class_index = {name: k for k, name in enumerate(names)}
        elif key == "@data":
            self.start_data(ln)
        else:
            raise self.fail(
                ln,
                f"unknown header {tokens[0]!r}; expected one of @problemName @timeStamps @missing "
                "@univariate @dimensions @equalLength @seriesLength @classLabel @targetLabel @data",
            )

    def start_data(self, ln: int) -> None:
        h = self.header
        self.header["@data"] = ln
        if h.get("@classlabel") and h.get("@targetlabel"):
            raise self.fail(ln, "both @classLabel true and @targetLabel true: a case has one label")
        if not h.get("@classlabel") and not h.get("@targetlabel"):
            raise self.fail(ln, "no labels: the header needs '@classLabel true <names>' or '@targetLabel true'")
        if h.get("@univariate") is True:
            if h.get("@dimensions", 1) != 1:
                raise self.fail(ln, f"@univariate true contradicts @dimensions {h['@dimensions']}")
            self.n_dims = 1
        if "@dimensions" in h:
            self.n_dims = h["@dimensions"]
        if "@serieslength" in h and h.get("@equallength") is False:
            raise self.fail(ln, "@seriesLength given with @equalLength false")

    # data -----------------------------------------------------------------
    def _values(self, ln: int, d: int, field: str) -> tuple[np.ndarray, np.ndarray | None]:
        """Parse one dimension: values float64 (L,) and, with time stamps, times float64 (L,)."""
        if not field.strip():
            raise self.fail(ln, f"dimension {d + 1} is empty")
        if self.header.get("@timestamps"):
            pairs = _TUPLE.findall(field)
            rest = _TUPLE.sub("", field).replace(",", "").strip()
            if not pairs or rest:
                raise self.fail(
                    ln,
                    f"dimension {d + 1}: with @timeStamps true values must be '(time,value)' pairs, got {field.strip()[:40]!r}",
                )
            times, values = np.empty(len(pairs)), np.empty(len(pairs))
            for j, pair in enumerate(pairs):
                stamp, sep, value = pair.rpartition(",")
                if not sep:
                    raise self.fail(ln, f"dimension {d + 1}, value {j + 1}: expected '(time,value)', got '({pair})'")
                try:
                    times[j] = _parse_time(stamp)
                except ValueError:
                    raise self.fail(ln, f"dimension {d + 1}, value {j + 1}: bad time stamp {stamp.strip()!r}") from None
                try:
                    values[j] = _parse_float(value)
                except ValueError:
                    raise self.fail(
                        ln, f"dimension {d + 1}, value {j + 1}: non-numeric value {value.strip()!r}"
                    ) from None
            return values, times
        parts = field.split(",")
        try:  # fast path: numpy parses the strings ('?' is the .ts missing marker)
            values = np.array(field.replace("?", "nan").split(","), dtype=np.float64)
        except ValueError:
            for j, p in enumerate(parts):
                try:
                    _parse_float(p)
                except ValueError:
                    shown = p.strip()
                    what = "empty value" if not shown else f"non-numeric value {shown!r}"
                    raise self.fail(ln, f"dimension {d + 1}, value {j + 1}: {what}") from None
            raise  # pragma: no cover
        return values, None

    def data_line(self, ln: int, text: str) -> None:
        fields = _split_top_level(text, ":")
        if self.n_dims is None:
            if len(fields) < 2:
                raise self.fail(ln, "expected '<dimension 1>:...:<dimension D>:<label>', found no ':' before a label")
            self.n_dims = len(fields) - 1
        if len(fields) != self.n_dims + 1:
            raise self.fail(
                ln,
                f"expected {self.n_dims} dimension(s) and a label ({self.n_dims + 1} ':'-separated fields), "
                f"got {len(fields)} field(s)",
            )
        label = fields[-1].strip()
        if not label:
            raise self.fail(ln, "missing label after the last ':'")
        if self.header.get("@classlabel"):
            if label not in self.class_index:
                shown = ", ".join(self.class_names)
                raise self.fail(ln, f"unknown class label {label!r}; @classLabel declares: {shown}")
            target = self.class_index[label]
        else:
            try:
                target = float(label)
            except ValueError:
                raise self.fail(ln, f"target label {label!r} is not a number (@targetLabel true)") from None
            if not np.isfinite(target):
                raise self.fail(ln, f"target label {label!r} is not finite")

        dims, times = [], None
        for d, field in enumerate(fields[:-1]):
            values, stamps = self._values(ln, d, field)
            if dims and len(values) != len(dims[0]):
                raise self.fail(
                    ln,
                    f"dimension {d + 1} has {len(values)} values but dimension 1 has {len(dims[0])}; "
                    "the dimensions of one case must have equal lengths",
                )
            if stamps is not None:
                if times is None:
                    times = stamps
                elif not np.array_equal(times, stamps):
                    raise self.fail(ln, f"dimension {d + 1} has other time stamps than dimension 1")
            dims.append(values)
        x = np.stack(dims, axis=1)
        if not self.header.get("@equallength") and times is None:
            # unequal-length data padded at the end with missing values in every dimension
            present = np.flatnonzero(~np.isnan(x).all(axis=1))
            keep = int(present[-1]) + 1 if present.size else len(x)
            if keep < len(x):
                self.trimmed += len(x) - keep
                x = x[:keep]
        length = len(x)
        series_length = self.header.get("@serieslength")
        if series_length is not None and length != series_length:
            raise self.fail(ln, f"series of length {length}, but @seriesLength is {series_length}")
        if self.header.get("@equallength") and self.inputs and length != len(self.inputs[0]):
            raise self.fail(
                ln, f"series of length {length}, but @equalLength true and the first case has {len(self.inputs[0])}"
            )
        if np.isinf(x).any():
            raise self.fail(ln, "infinite value")
        if times is not None:
            if np.isnan(times).any():
                raise self.fail(ln, "missing time stamp")
            if length > 1 and not (np.diff(times) > 0).all():
                k = int(np.flatnonzero(np.diff(times) <= 0)[0]) + 1
                raise self.fail(ln, f"time stamps not strictly increasing at value {k + 1}")
        gaps = np.isnan(x)
        if gaps.any():
            if self.header.get("@missing") is False:
                raise self.fail(ln, "missing value ('?' or NaN) but the header says @missing false")
            if self.missing == "error":
                d = int(np.flatnonzero(gaps.any(axis=0))[0])
                raise self.fail(ln, f"dimension {d + 1}: missing value (load with missing='interpolate' to fill gaps)")
            self.missing_count += int(gaps.sum())
            axis = times if times is not None else np.arange(length, dtype=np.float64)
            for d in range(x.shape[1]):
                bad = gaps[:, d]
                if bad.all():
                    raise self.fail(ln, f"dimension {d + 1}: every value is missing; nothing to interpolate from")
                if bad.any():
                    x[bad, d] = np.interp(axis[bad], axis[~bad], x[~bad, d])
        self.inputs.append(x.astype(np.float32))
        self.targets.append(target)
        if times is not None:
            self.times.append(times)

    def read(self) -> tuple[SequenceDataset, dict]:
        last = 0
        try:
            with open(self.path, encoding="utf-8") as handle:
                for ln, raw in enumerate(handle, start=1):
                    last = ln
                    text = raw.strip()
                    if not text or text.startswith(("#", "%")):
                        continue
                    if "@data" not in self.header:
                        if not text.startswith("@"):
                            raise self.fail(ln, f"data before @data (expected a @header line), got {text[:40]!r}")
                        self.header_line(ln, text)
                    elif text.startswith("@"):
                        raise self.fail(ln, f"header {text.split()[0]!r} after @data")
                    else:
                        self.data_line(ln, text)
        except UnicodeDecodeError as exc:
            raise self.fail(last + 1, f"not UTF-8 text ({exc.reason})") from None
        if "@data" not in self.header:
            raise self.fail(None, f"no @data line in {last} lines (truncated, or not a .ts file)")
        if not self.inputs:
            raise self.fail(last, "no cases after @data (truncated file?)")
        classification = bool(self.header.get("@classlabel"))
        if classification:
            targets = np.asarray(self.targets, dtype=np.int64)
        else:
            targets = np.asarray(self.targets, dtype=np.float32)[:, None]
        dataset = SequenceDataset(self.inputs, targets, self.times if self.header.get("@timestamps") else None)
        info = dataset_info(
            dataset,
            self.class_names if classification else None,
            format="ts",
            path=str(self.path),
            problem_name=self.header.get("@problemname"),
            missing_values=self.missing_count,
            trimmed_padding=self.trimmed,
        )
        return dataset, info


def read_ts(path: str | os.PathLike, *, missing: str = "interpolate") -> tuple[SequenceDataset, dict]:
    """Read a UEA/UCR ``.ts`` file. Inputs float32 (L_i, D); see the module docstring."""
    if missing not in MISSING_POLICIES:
        raise ValueError(f"missing must be one of {MISSING_POLICIES}, got {missing!r}")
    return _TsReader(Path(path), missing).read()


# --------------------------------------------------------------------------- .npz
def _npz_fail(path: Path, key: str | None, what: str) -> DataFormatError:
    where = f"{path}[{key}]" if key else f"{path}"
    return DataFormatError(f"{where}: {what}")


def _check_increasing(path: Path, t_list: list[np.ndarray]) -> None:
    for i, t in enumerate(t_list):
        if not np.isfinite(t).all():
            raise _npz_fail(path, "t", f"sequence {i}: time stamps contain NaN or Inf")
        steps = np.diff(t)
        if steps.size and not (steps > 0).all():
            k = int(np.flatnonzero(steps <= 0)[0]) + 1
            raise _npz_fail(path, "t", f"sequence {i}: time stamps not strictly increasing at step {k}")


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
    x = arrays["x"]
    if x.dtype.kind == "b" or x.dtype.kind not in "fiu":
        raise _npz_fail(path, "x", f"dtype {x.dtype}; expected float features or integer token ids")
    tokens = x.dtype.kind in "iu"
    feat_ndim = 1 if tokens else 2  # ndim of one sequence

    lengths = arrays.get("lengths")
    if lengths is not None:
        if lengths.ndim != 1 or lengths.dtype.kind not in "iu":
            raise _npz_fail(path, "lengths", f"expected integer (N,), got dtype {lengths.dtype} shape {lengths.shape}")
        if lengths.size == 0:
            raise _npz_fail(path, "lengths", "empty: no sequences")
        if lengths.min() < 1:
            i = int(np.argmin(lengths))
            raise _npz_fail(path, "lengths", f"sequence {i} has length {int(lengths[i])}; lengths must be >= 1")
        lengths = lengths.astype(np.int64)
        if x.ndim == feat_ndim:
            layout = "concatenated"
            if int(lengths.sum()) != x.shape[0]:
                raise _npz_fail(
                    path, "lengths", f"sum to {int(lengths.sum())} but x has {x.shape[0]} rows (concatenated layout)"
                )
        elif x.ndim == feat_ndim + 1:
            layout = "padded"
            if lengths.shape[0] != x.shape[0]:
                raise _npz_fail(
                    path,
                    "lengths",
                    f"has {lengths.shape[0]} entries but x holds {x.shape[0]} sequences (padded layout)",
                )
            if lengths.max() > x.shape[1]:
                i = int(np.argmax(lengths))
                raise _npz_fail(
                    path, "lengths", f"sequence {i} has length {int(lengths[i])} > padded length {x.shape[1]}"
                )
        else:
            want = "(sum L, D) or (N, L_max, D)" if not tokens else "(sum L,) or (N, L_max)"
            raise _npz_fail(
                path,
                "x",
                f"shape {x.shape} does not fit {'tokens' if tokens else 'features'} with lengths: expected {want}",
            )
    else:
        if x.ndim != feat_ndim + 1:
            if tokens:
                raise _npz_fail(path, "x", f"integer tokens need shape (N, L) without 'lengths', got {x.shape}")
            raise _npz_fail(
                path,
                "x",
                f"float features need shape (N, L, D) without 'lengths', got {x.shape} "
                "(for univariate data add a trailing axis of size 1; for a concatenation give 'lengths')",
            )
        layout = "dense"
        lengths = np.full(x.shape[0], x.shape[1], dtype=np.int64)
    n = lengths.shape[0]
    if n == 0 or (layout == "dense" and x.shape[1] == 0):
        raise _npz_fail(path, "x", f"no data (shape {x.shape})")
    if not tokens and x.shape[-1] == 0:
        raise _npz_fail(path, "x", "zero features (D = 0)")

    def split(array: np.ndarray) -> list[np.ndarray]:
        if layout == "concatenated":
            return np.split(array, np.cumsum(lengths)[:-1])
        return [array[i, : lengths[i]] for i in range(n)]

    inputs = split(x)
    if tokens:
        for i, seq in enumerate(inputs):
            if seq.size and seq.min() < 0:
                raise _npz_fail(path, "x", f"sequence {i}: token ids must be >= 0, got {int(seq.min())}")
            if seq.size and seq.max() >= MAX_VOCAB:
                raise _npz_fail(path, "x", f"sequence {i}: token id {int(seq.max())} is beyond the largest "
                                           f"vocabulary s5ssm builds ({MAX_VOCAB:,} ids)")  # fmt: skip
        inputs = [seq.astype(np.int64, copy=False) for seq in inputs]
    else:
        for i, seq in enumerate(inputs):
            if not np.isfinite(seq).all():
                raise _npz_fail(path, "x", f"sequence {i} contains NaN or Inf")
        inputs = [seq.astype(np.float32, copy=False) for seq in inputs]

    timestamps = None
    if "t" in arrays:
        t = arrays["t"]
        if t.dtype.kind not in "fiu" or t.dtype.kind == "b":
            raise _npz_fail(path, "t", f"dtype {t.dtype}; expected float time stamps")
        expected = {
            "dense": (n, int(x.shape[1])),
            "padded": (n, int(x.shape[1])),
            "concatenated": (int(lengths.sum()),),
        }[layout]
        if t.shape != expected:
            raise _npz_fail(path, "t", f"shape {t.shape} does not match x's {layout} layout; expected {expected}")
        timestamps = [s.astype(np.float64) for s in split(t)]
        _check_increasing(path, timestamps)

    class_names = None
    if "class_names" in arrays:
        names = arrays["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US" or names.size == 0:
            raise _npz_fail(
                path,
                "class_names",
                f"expected a non-empty 1-D string array, got dtype {names.dtype} shape {names.shape}",
            )
        class_names = [str(s) for s in names.astype(str)]
        if len(set(class_names)) != len(class_names):
            raise _npz_fail(path, "class_names", "contains duplicate names")

    y = arrays["y"]
    if y.shape[:1] != (n,):
        raise _npz_fail(path, "y", f"has {y.shape[0] if y.ndim else 0} targets (shape {y.shape}) for {n} sequences")
    if y.dtype.kind in "US":
        if y.ndim != 1:
            raise _npz_fail(path, "y", f"string class labels must be (N,), got shape {y.shape}")
        labels = [str(label) for label in y.astype(str).tolist()]
        if class_names is None:
            class_names = sorted(set(labels))
        index = {name: k for k, name in enumerate(class_names)}
        unknown = [i for i, label in enumerate(labels) if label not in index]
        if unknown:
            raise _npz_fail(path, "y", f"sequence {unknown[0]}: label {labels[unknown[0]]!r} is not in class_names")
        targets = np.fromiter((index[label] for label in labels), dtype=np.int64, count=n)
    elif y.dtype.kind in "iub":
        if y.ndim != 1:
            raise _npz_fail(path, "y", f"integer class labels must be (N,), got shape {y.shape}")
        targets = y.astype(np.int64)
        if targets.min() < 0:
            raise _npz_fail(path, "y", f"sequence {int(np.argmin(targets))}: class label {int(targets.min())} < 0")
        if class_names is None:  # the classes are the labels that occur, named by their values
            values, inverse = np.unique(targets, return_inverse=True)
            targets = inverse.reshape(-1).astype(np.int64)
            class_names = [str(v) for v in values.tolist()]
        elif targets.max() >= len(class_names):
            i = int(np.argmax(targets))
            raise _npz_fail(
                path, "y", f"sequence {i}: class label {int(targets[i])} but only {len(class_names)} class_names"
            )
    elif y.dtype.kind == "f":
        if class_names is not None:
            raise _npz_fail(path, "class_names", "given with float (regression) targets")
        targets = y.astype(np.float32)
        if targets.ndim == 1:
            targets = targets[:, None]
        if targets.ndim == 3:
            if targets.shape[1] < lengths.max():
                raise _npz_fail(
                    path,
                    "y",
                    f"per-step targets cover {targets.shape[1]} steps, shorter than the longest sequence ({int(lengths.max())})",
                )
            for i in range(n):  # only the valid steps must be finite
                if not np.isfinite(targets[i, : lengths[i]]).all():
                    raise _npz_fail(path, "y", f"sequence {i} contains NaN or Inf")
                targets[i, lengths[i] :] = 0.0
        elif targets.ndim != 2:
            raise _npz_fail(path, "y", f"regression targets must be (N,), (N, T) or (N, L, T), got shape {y.shape}")
        elif not np.isfinite(targets).all():
            raise _npz_fail(
                path, "y", f"sequence {int(np.flatnonzero(~np.isfinite(targets).all(axis=1))[0])} contains NaN or Inf"
            )
    else:
        raise _npz_fail(path, "y", f"dtype {y.dtype}; expected integer or string class labels or float targets")

    vocab_size = None
    if "vocab_size" in arrays:
        v = arrays["vocab_size"]
        if v.shape != () or v.dtype.kind not in "iu":
            raise _npz_fail(path, "vocab_size", f"expected an integer scalar, got dtype {v.dtype} shape {v.shape}")
        if not tokens:
            raise _npz_fail(path, "vocab_size", "given but x holds float features, not tokens")
        vocab_size = int(v)
        top = max(int(seq.max()) for seq in inputs)
        if top >= vocab_size:
            raise _npz_fail(path, "vocab_size", f"is {vocab_size} but x holds token id {top}")

    try:
        dataset = SequenceDataset(inputs, targets, timestamps)
    except ValueError as exc:  # pragma: no cover - the checks above catch these first
        raise _npz_fail(path, None, str(exc)) from None
    info = dataset_info(dataset, class_names, format="npz", path=str(path), layout=layout, vocab_size=vocab_size)
    return dataset, info


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
