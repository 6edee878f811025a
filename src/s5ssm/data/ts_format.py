"""The reader of UEA/UCR ``.ts`` files (s5ssm.data.formats.load_file dispatches here).

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
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

import numpy as np

from .dataset import SequenceDataset
from .format_base import DataFormatError, dataset_info

__all__ = ["read_ts", "MISSING_POLICIES"]

MISSING_POLICIES = ("interpolate", "error")

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
        """One case: '<dimension 1>:...:<dimension D>:<label>' -> float32 (L, D) inputs, its target."""
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
        target = self._target(ln, fields[-1].strip())
        x, times = self._case(ln, fields[:-1])
        if not self.header.get("@equallength") and times is None:
            x = self._trim_padding(x)
        self._check_case(ln, x, times)
        if np.isnan(x).any():
            self._fill_missing(ln, x, times)
        self.inputs.append(x.astype(np.float32))
        self.targets.append(target)
        if times is not None:
            self.times.append(times)

    def _target(self, ln: int, label: str) -> int | float:
        """A case's label: its class index (@classLabel) or its float target (@targetLabel)."""
        if not label:
            raise self.fail(ln, "missing label after the last ':'")
        if self.header.get("@classlabel"):
            if label not in self.class_index:
                shown = ", ".join(self.class_names)
                raise self.fail(ln, f"unknown class label {label!r}; @classLabel declares: {shown}")
            return self.class_index[label]
        try:
            target = float(label)
        except ValueError:
            raise self.fail(ln, f"target label {label!r} is not a number (@targetLabel true)") from None
        if not np.isfinite(target):
            raise self.fail(ln, f"target label {label!r} is not finite")
        return target

    def _case(self, ln: int, fields: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """The dimensions of a case as float64 (L, D) values (NaN where missing) and, with time
        stamps, float64 (L,) times, which every dimension must share."""
        dims, times = [], None
        for d, field in enumerate(fields):
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
        return np.stack(dims, axis=1), times

    def _trim_padding(self, x: np.ndarray) -> np.ndarray:
        """x (L, D) without the steps at its end that are missing in every dimension: the
        padding of unequal-length data (counted in self.trimmed)."""
        present = np.flatnonzero(~np.isnan(x).all(axis=1))
        keep = int(present[-1]) + 1 if present.size else len(x)
        self.trimmed += len(x) - keep
        return x[:keep]

    def _check_case(self, ln: int, x: np.ndarray, times: np.ndarray | None) -> None:
        """The case's length against the header, no infinite value, increasing time stamps
        (checked here to name the line; SequenceDataset checks the values again)."""
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

    def _fill_missing(self, ln: int, x: np.ndarray, times: np.ndarray | None) -> None:
        """Fill the missing values of x (L, D) in place, per the missing policy: linear
        interpolation over the time stamps (else the step index) of each dimension."""
        gaps = np.isnan(x)
        if self.header.get("@missing") is False:
            raise self.fail(ln, "missing value ('?' or NaN) but the header says @missing false")
        if self.missing == "error":
            d = int(np.flatnonzero(gaps.any(axis=0))[0])
            raise self.fail(ln, f"dimension {d + 1}: missing value (load with missing='interpolate' to fill gaps)")
        self.missing_count += int(gaps.sum())
        axis = times if times is not None else np.arange(len(x), dtype=np.float64)
        for d in range(x.shape[1]):
            bad = gaps[:, d]
            if bad.all():
                raise self.fail(ln, f"dimension {d + 1}: every value is missing; nothing to interpolate from")
            if bad.any():
                x[bad, d] = np.interp(axis[bad], axis[~bad], x[~bad, d])

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
