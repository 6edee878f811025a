"""The adding problem (Hochreiter & Schmidhuber 1997; as set up in the uRNN and IndRNN papers).

Each sequence has ``length`` steps of 2 features, float32 (L, 2):
    channel 0: values drawn uniformly from [0, 1];
    channel 1: a marker, 0 everywhere except exactly two 1s, one at a uniform position
               in the first half [0, L//2) and one in the second half [L//2, L).
The target, float32 (1,), is the sum of the two marked values (in [0, 2]). Regression,
metric MSE; always predicting the mean (1.0) scores MSE = 2 * 1/12 ~= 0.167.

Options: ``length`` (default 1000; the "tiny" size uses 40).
Sizes: default 20,000 / 2,000 / 2,000 (train / val / test), tiny 48 / 16 / 16.
"""

from __future__ import annotations

import numpy as np

from ..dataset import SequenceDataset
from .base import Task, equal_length_inputs, model_defaults, split_rng

NAME = "adding"
DEFAULT_OPTIONS = {"length": 1000}


def generate_adding(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n adding-problem sequences: inputs float32 (n, length, 2), targets float32 (n, 1)."""
    if length < 2:
        raise ValueError(f"length must be >= 2 (one marker in each half), got {length}")
    half = length // 2
    x = np.zeros((n, length, 2), dtype=np.float32)
    x[:, :, 0] = rng.random((n, length), dtype=np.float32)
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, length, size=n)
    rows = np.arange(n)
    x[rows, first, 1] = 1.0
    x[rows, second, 1] = 1.0
    y = (x[rows, first, 0].astype(np.float64) + x[rows, second, 0]).astype(np.float32)[:, None]
    return x, y


def _generate(seed: int, counts: dict[str, int], *, length: int) -> dict[str, SequenceDataset]:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise ValueError(f"length must be an int, got {length!r}")
    out = {}
    for split, n in counts.items():
        x, y = generate_adding(n, int(length), split_rng(seed, split))
        out[split] = SequenceDataset(equal_length_inputs(x), y)
    return out


def build(**options) -> Task:
    opts = {**DEFAULT_OPTIONS, **options}
    return Task(
        name=NAME,
        description="adding problem: sum the two marked values of a long uniform sequence (regression, MSE)",
        kind="regression",
        metric="mse",
        input_dim=2,
        output_dim=1,
        generator=_generate,
        model_defaults=model_defaults(
            hidden_size=64,
            state_size=64,
            blocks=4,
            num_layers=4,
            pooling="last",
            # BatchNorm: a LayerNorm over the features of one step rescales the encoded
            # (value, marker) pair per step, and the model stays at the mean predictor
            # (MSE 0.167) where BatchNorm solves L = 100 in two epochs
            norm="batch",
        ),
        train_defaults=dict(epochs=20, batch_size=50, ssm_lr=0.001, lr_factor=4, weight_decay=0.01, warmup_epochs=1),
        options=opts,
        bound_options=dict(options),
        sizes={
            "default": {"splits": (20000, 2000, 2000)},
            "tiny": {"splits": (48, 16, 16), "options": {"length": 40}},
        },
    )
