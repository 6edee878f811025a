"""Per-channel standardisation fitted on the training split and saved with the model.

`fit_standardization` computes each channel's mean and standard deviation over every
valid step of every sequence (padding is never seen: sequences are passed unpadded;
NaN values are skipped), in float64 so that large values neither overflow nor lose
precision. A channel with no spread (constant, or a single value) gets std 1, so it is
only shifted. `Standardize` holds the two vectors as buffers, so they travel in
``state_dict``, checkpoints and ``save_pretrained`` like any weight:

    forward(x)  = (x - mean) / std       x (..., C) -> (..., C)
    inverse(z)  = z * std + mean

    >>> import numpy as np
    >>> mean, std = fit_standardization([np.array([[1.0, 5.0], [3.0, 5.0]])])
    >>> mean.tolist(), std.tolist()
    ([2.0, 5.0], [1.0, 1.0])
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

__all__ = ["Standardize", "StandardizedIO", "fit_standardization"]

# below this a channel counts as constant (relative to its magnitude): scaling it by 1/std
# would only blow up rounding noise
_RELATIVE_TINY = 1e-7


def fit_standardization(arrays: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per channel over all rows of all arrays.

    Args:
        arrays: arrays of shape (L_i, C) (or (L_i,) for one channel), any float dtype;
            NaN entries are ignored.

    Returns:
        (mean, std), float64 (C,). std is 1 where a channel is constant or has no values
        (then mean is 0 if it has no values at all).

    Raises:
        ValueError: no arrays, channel counts that differ, or an infinite value.
    """
    rows = [np.asarray(a, dtype=np.float64) for a in arrays]
    if not rows:
        raise ValueError("fit_standardization: no arrays to fit on")
    rows = [r[:, None] if r.ndim == 1 else r for r in rows]
    channels = {r.shape[1] for r in rows}
    if len(channels) != 1:
        raise ValueError(f"fit_standardization: arrays have different channel counts {sorted(channels)}")
    values = np.concatenate(rows, axis=0)
    if np.isinf(values).any():
        raise ValueError("fit_standardization: values contain +-Inf")
    present = ~np.isnan(values)
    count = present.sum(axis=0)
    filled = np.where(present, values, 0.0)
    # shift by one present value per channel first: keeps the variance exact for data far from 0
    pivot = np.array([filled[present[:, c], c][0] if count[c] else 0.0 for c in range(values.shape[1])])
    centred = np.where(present, values - pivot, 0.0)
    mean_shift = centred.sum(axis=0) / np.maximum(count, 1)
    var = (np.where(present, centred - mean_shift, 0.0) ** 2).sum(axis=0) / np.maximum(count, 1)
    mean = pivot + mean_shift
    std = np.sqrt(var)
    constant = (count < 2) | (std <= _RELATIVE_TINY * np.maximum(np.abs(mean), 1.0))
    return mean, np.where(constant, 1.0, std)


class Standardize(nn.Module):
    """z = (x - mean) / std over the last dimension, with mean and std as buffers (C,).

    Starts as the identity (mean 0, std 1); `fit` sets both from data.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"Standardize: channels must be a positive int, got {channels!r}")
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("std", torch.ones(channels))

    def fit(self, arrays: Iterable[np.ndarray]) -> "Standardize":
        """Set mean and std from arrays (L_i, C) (see fit_standardization); returns self."""
        mean, std = fit_standardization(arrays)
        if mean.shape != self.mean.shape:
            raise ValueError(f"Standardize.fit: data has {mean.shape[0]} channels, expected {self.mean.shape[0]}")
        with torch.no_grad():
            self.mean.copy_(torch.from_numpy(mean))
            self.std.copy_(torch.from_numpy(std))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C) in data units -> (..., C) standardised."""
        return (x - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """(..., C) standardised -> (..., C) in data units."""
        return z * self.std + self.mean


class StandardizedIO:
    """Mixin for models: optional input and output standardisation.

    `_init_scaling` adds `input_scaling` (features, float inputs only) and `output_scaling`
    (the head's outputs) as Standardize modules, or None when off; `_scale_in` maps inputs
    in data units to what the encoder reads, `_scale_out` the head's output back to the
    data's units.
    """

    def _init_scaling(self, inputs: bool, outputs: bool, embed_dim, vocab_size, output_dim) -> None:
        if inputs and vocab_size is not None:
            raise ValueError("standardize_inputs: token inputs (vocab_size) have no scale to standardise")
        if outputs and not output_dim:
            raise ValueError("standardize_outputs needs a head (output_dim)")
        self.input_scaling = Standardize(embed_dim) if inputs else None
        self.output_scaling = Standardize(output_dim) if outputs else None

    def _scale_in(self, x: torch.Tensor) -> torch.Tensor:
        return self.input_scaling(x) if self.input_scaling is not None else x

    def _scale_out(self, y: torch.Tensor) -> torch.Tensor:
        return self.output_scaling.inverse(y) if self.output_scaling is not None else y
