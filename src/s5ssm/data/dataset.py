"""In-memory sequence datasets and their batching.

A :class:`SequenceDataset` holds N variable-length sequences as plain numpy arrays:

    inputs      list of N arrays, each float32 (L_i, D) features or int64 (L_i,) token ids
    targets     int64 (N,) class labels, float32 (N, T) regression targets, or
                float32 (N, L_T, T) per-step regression targets (L_T >= every L_i; the
                steps past a sequence's own length are ignored)
    timestamps  None, or a list of N float64 (L_i,) strictly increasing sample times
                (irregular sampling)

It is a map-style dataset (``len``/``[i]``), so ``torch.utils.data.DataLoader`` with
:func:`collate` as ``collate_fn`` (and a ``DistributedSampler`` in multi-process runs)
works on it directly. Items are plain dicts of numpy arrays, so they pickle cheaply for
worker processes:

    {"x": inputs[i], "y": targets[i]}            (+ "t": timestamps[i] when present)

:func:`collate` pads on the right to the longest sequence of the batch and returns torch
tensors; it never truncates. :func:`seeded_split` splits deterministically from a seed.

    >>> import numpy as np
    >>> ds = SequenceDataset([np.zeros((3, 2), np.float32), np.ones((5, 2), np.float32)],
    ...                      np.array([0, 1]))
    >>> batch = collate([ds[0], ds[1]])
    >>> tuple(batch["x"].shape), batch["mask"].sum(1).tolist(), batch["y"].tolist()
    ((2, 5, 2), [3, 5], [0, 1])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SequenceDataset", "collate", "seeded_split", "step_scale_from_timestamps"]


def _as_index_array(indices: Any, n: int, name: str) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n,):
            raise ValueError(f"{name}: a boolean mask must have shape ({n},), got {idx.shape}")
        return np.flatnonzero(idx)
    if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
        raise ValueError(f"{name}: expected a 1-D sequence of integer indices, got dtype {idx.dtype} shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise ValueError(f"{name}: indices must be in [-{n}, {n}), got [{idx.min()}, {idx.max()}]")
    return np.where(idx < 0, idx + n, idx)


@dataclass
class SequenceDataset:
    """N sequences with their targets (and optional sample times). See the module docstring.

    Construction validates everything and normalises dtypes: float inputs become float32,
    integer inputs int64 (token ids, >= 0), class targets int64 (>= 0), regression targets
    float32 (a 1-D float target becomes (N, 1)), timestamps float64. Inconsistent data
    raises ValueError naming the field and the index, e.g. ``inputs[3]: ...``.

    Attributes:
        inputs: list of N arrays, float32 (L_i, D) with one D for all, or int64 (L_i,).
        targets: int64 (N,), float32 (N, T), or float32 (N, L_T, T) per step.
        timestamps: None or list of N float64 (L_i,), strictly increasing.
    """

    inputs: list
    targets: np.ndarray
    timestamps: list | None = None

    def __post_init__(self) -> None:
        if isinstance(self.inputs, np.ndarray):
            raise ValueError(
                "inputs: expected a list of per-sequence arrays, got one ndarray "
                f"of shape {self.inputs.shape}; use list(array) for equal-length data"
            )
        if not isinstance(self.inputs, (list, tuple)):
            raise ValueError(f"inputs: expected a list of arrays, got {type(self.inputs).__name__}")
        self.inputs = list(self.inputs)
        n = len(self.inputs)
        if n == 0:
            raise ValueError("inputs: the dataset has no sequences")
        self._check_inputs()
        self._check_targets(n)
        self._check_timestamps(n)

    # ------------------------------------------------------------------ validation
    def _check_inputs(self) -> None:
        first = self.inputs[0]
        if not isinstance(first, np.ndarray):
            raise ValueError(f"inputs[0]: expected a numpy array, got {type(first).__name__}")
        tokens = np.issubdtype(first.dtype, np.integer)
        dim = None
        for i, x in enumerate(self.inputs):
            if not isinstance(x, np.ndarray):
                raise ValueError(f"inputs[{i}]: expected a numpy array, got {type(x).__name__}")
            if tokens:
                if not np.issubdtype(x.dtype, np.integer):
                    raise ValueError(
                        f"inputs[{i}]: dtype {x.dtype} but inputs[0] holds integer tokens; mixing tokens and features"
                    )
                if x.ndim != 1:
                    raise ValueError(f"inputs[{i}]: token sequences must be 1-D (L,), got shape {x.shape}")
                if x.shape[0] == 0:
                    raise ValueError(f"inputs[{i}]: empty sequence (length 0)")
                if x.min() < 0:
                    raise ValueError(f"inputs[{i}]: token ids must be >= 0, got {int(x.min())}")
                if x.dtype != np.int64:
                    self.inputs[i] = x.astype(np.int64)
            else:
                if not np.issubdtype(x.dtype, np.floating):
                    raise ValueError(
                        f"inputs[{i}]: dtype {x.dtype}; expected float features (or integer tokens everywhere)"
                    )
                if x.ndim != 2:
                    raise ValueError(f"inputs[{i}]: feature sequences must be 2-D (L, D), got shape {x.shape}")
                if x.shape[0] == 0:
                    raise ValueError(f"inputs[{i}]: empty sequence (length 0)")
                if dim is None:
                    dim = x.shape[1]
                    if dim == 0:
                        raise ValueError("inputs[0]: zero features (D = 0)")
                elif x.shape[1] != dim:
                    raise ValueError(f"inputs[{i}]: has D={x.shape[1]} features but inputs[0] has D={dim}")
                if not np.isfinite(x).all():
                    raise ValueError(f"inputs[{i}]: contains NaN or Inf")
                if x.dtype != np.float32:
                    self.inputs[i] = x.astype(np.float32)

    def _check_targets(self, n: int) -> None:
        y = self.targets
        if not isinstance(y, np.ndarray):
            raise ValueError(f"targets: expected a numpy array, got {type(y).__name__}")
        if y.shape[:1] != (n,):
            raise ValueError(f"targets: expected first dim N={n} (one per sequence), got shape {y.shape}")
        if np.issubdtype(y.dtype, np.integer):
            if y.ndim != 1:
                raise ValueError(f"targets: integer class labels must be (N,), got shape {y.shape}")
            if y.min() < 0:
                bad = int(np.flatnonzero(y < 0)[0])
                raise ValueError(f"targets[{bad}]: class labels must be >= 0, got {int(y[bad])}")
            self.targets = y.astype(np.int64, copy=False)
        elif np.issubdtype(y.dtype, np.floating):
            if y.ndim == 1:
                y = y[:, None]
            if y.ndim not in (2, 3) or y.shape[-1] == 0:
                raise ValueError(
                    f"targets: regression targets must be (N, T) or per-step (N, L, T), got shape {self.targets.shape}"
                )
            finite = np.isfinite(y).reshape(n, -1).all(axis=1)
            if not finite.all():
                raise ValueError(f"targets[{int(np.flatnonzero(~finite)[0])}]: contains NaN or Inf")
            if y.ndim == 3:
                longest = int(np.argmax(self.lengths))
                if y.shape[1] < self.lengths[longest]:
                    raise ValueError(
                        f"targets: per-step targets cover L={y.shape[1]} steps but inputs[{longest}] "
                        f"has length {self.lengths[longest]}"
                    )
            self.targets = y.astype(np.float32, copy=False)
        else:
            raise ValueError(f"targets: dtype {y.dtype}; expected int64 class labels or float32 regression targets")

    def _check_timestamps(self, n: int) -> None:
        if self.timestamps is None:
            return
        if isinstance(self.timestamps, np.ndarray) or not isinstance(self.timestamps, (list, tuple)):
            raise ValueError(f"timestamps: expected None or a list of N arrays, got {type(self.timestamps).__name__}")
        self.timestamps = list(self.timestamps)
        if len(self.timestamps) != n:
            raise ValueError(f"timestamps: {len(self.timestamps)} arrays for {n} sequences")
        for i, t in enumerate(self.timestamps):
            if not isinstance(t, np.ndarray) or not (
                np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)
            ):
                raise ValueError(f"timestamps[{i}]: expected a numeric numpy array, got {type(t).__name__}")
            if t.shape != (len(self.inputs[i]),):
                raise ValueError(
                    f"timestamps[{i}]: shape {t.shape} does not match inputs[{i}] length ({len(self.inputs[i])},)"
                )
            t = t.astype(np.float64, copy=False)
            if not np.isfinite(t).all():
                raise ValueError(f"timestamps[{i}]: contains NaN or Inf")
            steps = np.diff(t)
            if steps.size and not (steps > 0).all():
                k = int(np.flatnonzero(steps <= 0)[0]) + 1
                raise ValueError(f"timestamps[{i}]: not strictly increasing at step {k} ({t[k - 1]!r} -> {t[k]!r})")
            self.timestamps[i] = t

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        """One item as a plain dict: {"x": inputs[i], "y": targets[i]} (+ "t": timestamps[i])."""
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TypeError(f"index must be an int, got {type(index).__name__} (use subset() for several)")
        n = len(self.inputs)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} sequences")
        item = {"x": self.inputs[index], "y": self.targets[index]}
        if self.timestamps is not None:
            item["t"] = self.timestamps[index]
        return item

    def subset(self, indices: Sequence[int] | np.ndarray) -> SequenceDataset:
        """A new dataset with the items at `indices` (ints or a boolean mask), in that order.

        The arrays are shared, not copied.
        """
        idx = _as_index_array(indices, len(self), "indices")
        return SequenceDataset(
            inputs=[self.inputs[i] for i in idx],
            targets=self.targets[idx],
            timestamps=None if self.timestamps is None else [self.timestamps[i] for i in idx],
        )

    # ------------------------------------------------------------------ summaries
    @property
    def lengths(self) -> np.ndarray:
        """int64 (N,): the length L_i of each sequence."""
        return np.fromiter((len(x) for x in self.inputs), dtype=np.int64, count=len(self.inputs))

    @property
    def is_tokens(self) -> bool:
        """True when the inputs are int64 token ids (L_i,)."""
        return self.inputs[0].ndim == 1

    @property
    def input_dim(self) -> int | None:
        """D for float features, None for token inputs."""
        return None if self.is_tokens else int(self.inputs[0].shape[1])

    @property
    def kind(self) -> str:
        """ "classification" (int64 targets) or "regression" (float32 targets)."""
        return "classification" if self.targets.dtype == np.int64 else "regression"

    @property
    def per_step(self) -> bool:
        """True for per-step regression targets (N, L_T, T)."""
        return self.targets.ndim == 3

    def __repr__(self) -> str:
        lengths = self.lengths
        what = "tokens" if self.is_tokens else f"D={self.input_dim}"
        ts = ", timestamps" if self.timestamps is not None else ""
        return (
            f"SequenceDataset(N={len(self)}, {what}, L={lengths.min()}..{lengths.max()}, "
            f"{self.kind} targets {tuple(self.targets.shape)}{ts})"
        )


def step_scale_from_timestamps(t: np.ndarray) -> np.ndarray:
    """float32 (L,): the time elapsed since the previous sample, for a float64 (L,) time axis.

    Step k > 0 gets t[k] - t[k-1]. The first step has no predecessor: it gets the median
    gap of the sequence (a typical step, so the first input is neither ignored nor
    over-weighted by the discretisation), or 1.0 for a length-1 sequence.
    """
    t = np.asarray(t, dtype=np.float64)
    out = np.empty(t.shape, dtype=np.float64)
    if t.size == 0:
        return out.astype(np.float32)
    gaps = np.diff(t)
    out[1:] = gaps
    out[0] = np.median(gaps) if gaps.size else 1.0
    return out.astype(np.float32)


def collate(items: Sequence[dict], pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Batch items of a SequenceDataset: right-pad to the longest sequence, never truncate.

    Args:
        items: B dicts as returned by ``SequenceDataset.__getitem__``.
        pad_to: pad to exactly this length instead of the batch's longest (e.g. fixed
            shapes for compiled models). A longer sequence raises ValueError.

    Returns:
        "x":      float32 (B, L, D) features or int64 (B, L) token ids, zeros past each end.
        "mask":   bool (B, L), True at valid steps.
        "lengths": int64 (B,).
        "y":      int64 (B,), float32 (B, T), or float32 (B, L, T) for per-step targets
                  (zeros past each end; mask them out of the loss).
        "step_scale": float32 (B, L), only when the items have timestamps: the time since
                  the previous sample; the first step gets its sequence's median gap (1.0
                  for a length-1 sequence), padded steps 1.0.
    """
    if isinstance(items, dict) or not isinstance(items, Sequence) or len(items) == 0:
        raise ValueError("items: expected a non-empty list of dataset items")
    first = items[0]
    if not isinstance(first, dict) or "x" not in first or "y" not in first:
        raise ValueError("items[0]: expected a dict with 'x' and 'y' (an item of SequenceDataset)")
    tokens = first["x"].ndim == 1
    has_t = "t" in first
    batch = len(items)
    lengths = np.empty(batch, dtype=np.int64)
    for i, item in enumerate(items):
        x = item["x"]
        if (x.ndim == 1) != tokens:
            raise ValueError(
                f"items[{i}]: 'x' has shape {x.shape}, inconsistent with items[0] shape {first['x'].shape}"
            )
        if not tokens and x.shape[1] != first["x"].shape[1]:
            raise ValueError(f"items[{i}]: 'x' has D={x.shape[1]} features, items[0] has D={first['x'].shape[1]}")
        if ("t" in item) != has_t:
            raise ValueError(f"items[{i}]: timestamps present in some items but not others")
        lengths[i] = x.shape[0]
    longest = int(lengths.max())
    if pad_to is not None:
        if longest > pad_to:
            j = int(np.argmax(lengths))
            raise ValueError(f"pad_to={pad_to} but items[{j}] has length {longest}; refusing to truncate")
        longest = int(pad_to)

    if tokens:
        x = np.zeros((batch, longest), dtype=np.int64)
    else:
        x = np.zeros((batch, longest, first["x"].shape[1]), dtype=np.float32)
    mask = np.arange(longest)[None, :] < lengths[:, None]
    for i, item in enumerate(items):
        x[i, : lengths[i]] = item["x"]

    y0 = np.asarray(first["y"])
    if y0.ndim == 2:  # per-step (L_T, T)
        y = np.zeros((batch, longest, y0.shape[1]), dtype=np.float32)
        for i, item in enumerate(items):
            yi = np.asarray(item["y"])
            if yi.ndim != 2 or yi.shape[1] != y0.shape[1] or yi.shape[0] < lengths[i]:
                raise ValueError(
                    f"items[{i}]: per-step 'y' of shape {yi.shape} does not cover length {lengths[i]} with T={y0.shape[1]}"
                )
            keep = min(yi.shape[0], longest)  # steps past the sequence's end carry no target
            y[i, :keep] = yi[:keep]
            y[i, lengths[i] :] = 0.0
    else:
        try:
            y = np.stack([np.asarray(item["y"]) for item in items])
        except ValueError as exc:
            raise ValueError(f"items: targets of different shapes cannot be batched ({exc})") from None
        y = y.astype(np.int64 if np.issubdtype(y.dtype, np.integer) else np.float32, copy=False)

    out = {
        "x": torch.from_numpy(x),
        "mask": torch.from_numpy(mask),
        "lengths": torch.from_numpy(lengths),
        "y": torch.from_numpy(np.ascontiguousarray(y)),
    }
    if has_t:
        scale = np.ones((batch, longest), dtype=np.float32)
        for i, item in enumerate(items):
            scale[i, : lengths[i]] = step_scale_from_timestamps(item["t"])
        out["step_scale"] = torch.from_numpy(scale)
    return out


def seeded_split(
    dataset: SequenceDataset, fraction: float, seed: int, *, stratify: bool = False
) -> tuple[SequenceDataset, SequenceDataset]:
    """Split deterministically into (a, b) with round(fraction * N) items in `a`, at least
    one item in each part.

    The items are drawn from ``numpy.random.default_rng(seed)``; each part keeps the
    original order. With ``stratify=True`` (classification only) every class is split in
    the same proportion as far as whole items allow (largest remainders first), and a
    class keeps at least one item in `b` whenever that is possible, so that `b` (e.g. the
    training part) sees every class.
    """
    if not isinstance(dataset, SequenceDataset):
        raise TypeError(f"dataset must be a SequenceDataset, got {type(dataset).__name__}")
    if not 0.0 < float(fraction) < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    n = len(dataset)
    if n < 2:
        raise ValueError(f"cannot split N={n} sequence(s) into two non-empty parts")
    total = min(max(int(round(fraction * n)), 1), n - 1)
    rng = np.random.default_rng(int(seed))
    if stratify:
        if dataset.kind != "classification":
            raise ValueError("stratify=True needs class labels (int64 targets)")
        first = _stratified_draw(dataset.targets, fraction, total, rng)
    else:
        first = rng.permutation(n)[:total]
    in_a = np.zeros(n, dtype=bool)
    in_a[first] = True
    return dataset.subset(np.flatnonzero(in_a)), dataset.subset(np.flatnonzero(~in_a))


def _stratified_draw(labels: np.ndarray, fraction: float, total: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of `total` items drawn class by class in proportion `fraction`.

    Each class c of n_c items first gets floor(fraction * n_c), at most n_c - 1; the items
    still owed go one at a time to the classes with the largest remainders (ties broken at
    random) that can give one and keep one. Only when no class can do that do classes give
    up their last item.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    keep_one = np.maximum(counts - 1, 0)
    take = np.minimum(np.floor(quota).astype(np.int64), keep_one)
    priority = np.lexsort((rng.random(classes.size), -(quota - np.floor(quota))))
    for limit in (keep_one, counts):
        while take.sum() < total and (take < limit).any():
            for c in priority:
                if take.sum() < total and take[c] < limit[c]:
                    take[c] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:k] for label, k in zip(classes, take)]
    return np.concatenate(chosen)
