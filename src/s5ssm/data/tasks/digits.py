"""Sequential 8x8 digits: scikit-learn's handwritten digits read pixel by pixel.

``sklearn.datasets.load_digits`` ships 1,797 grayscale 8x8 images (values 0..16) with the
package, so nothing is downloaded. Each image becomes a sequence of its 64 pixels in
row-major order, float32 (64, 1) scaled to [0, 1]; the target is the digit, int64 in
0..9 (10 classes). With ``permuted=True`` the pixels are reordered by one fixed
permutation drawn from ``permutation_seed`` (the same for every split and every ``seed``
unless ``permutation_seed`` changes), as in permuted sequential MNIST.

Splits: the 1,797 images are split by a stratified permutation drawn from ``seed``
(default 1,257 / 180 / 360, i.e. 70% / 10% / 20%; tiny 60 / 20 / 20). Custom sizes must
sum to at most 1,797. Needs scikit-learn (``pip install scikit-learn``).

Options: ``permuted`` (False), ``permutation_seed`` (0).
"""

from __future__ import annotations

import numpy as np

from ..dataset import SequenceDataset
from .base import Task, equal_length_inputs, model_defaults

NAME = "digits"
DEFAULT_OPTIONS = {"permuted": False, "permutation_seed": 0}
NUM_IMAGES = 1797


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits: pixels float32 (1797, 64) in [0, 1] (row-major), labels int64 (1797,)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the 'digits' task needs scikit-learn, which ships the 8x8 digits data: pip install scikit-learn"
        ) from None
    bunch = load_digits()
    pixels = (np.asarray(bunch.data, dtype=np.float32) / 16.0).reshape(-1, 64)
    return pixels, np.asarray(bunch.target, dtype=np.int64)


def pixel_permutation(permutation_seed: int) -> np.ndarray:
    """The fixed pixel order int64 (64,) used when permuted=True."""
    return np.random.default_rng([int(permutation_seed), 64]).permutation(64)


def stratified_split(labels: np.ndarray, counts: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Split indices into len(counts) disjoint parts of exactly those sizes, stratified by label.

    Each class is shuffled and dealt to the parts in proportion to their sizes (largest
    remainder), so every part keeps the overall class frequencies as closely as integers
    allow. Parts are returned shuffled.
    """
    total = sum(counts)
    if total > len(labels):
        raise ValueError(f"the split sizes sum to {total} but only {len(labels)} items exist")
    order = rng.permutation(len(labels))
    # Take `total` items keeping class proportions, then deal them round-robin by class.
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by class, shuffled within
    parts: list[list[int]] = [[] for _ in counts]
    fractions = np.asarray(counts, dtype=np.float64) / len(labels)
    for label in np.unique(labels):
        members = order[labels[order] == label]
        want = fractions * len(members)
        take = np.floor(want).astype(int)
        start = 0
        for p, k in enumerate(take):
            parts[p].extend(members[start : start + k].tolist())
            start += k
    # Fill each part up to its exact size from the leftovers (shuffled).
    used = np.zeros(len(labels), dtype=bool)
    for part in parts:
        used[part] = True
    leftovers = [i for i in rng.permutation(len(labels)) if not used[i]]
    for p, count in enumerate(counts):
        while len(parts[p]) < count:
            parts[p].append(leftovers.pop())
        if len(parts[p]) > count:  # pragma: no cover - floor() never over-allocates
            raise AssertionError("over-allocated split")
    return [rng.permutation(np.asarray(part, dtype=np.int64)) for part in parts]


def _generate(
    seed: int, counts: dict[str, int], *, permuted: bool, permutation_seed: int
) -> dict[str, SequenceDataset]:
    total = sum(counts.values())
    if total > NUM_IMAGES:
        raise ValueError(f"digits has {NUM_IMAGES} images; the requested split sizes {counts} sum to {total}")
    pixels, labels = load_digit_images()
    if permuted:
        pixels = pixels[:, pixel_permutation(permutation_seed)]
    rng = np.random.default_rng([int(seed), 1797])
    parts = stratified_split(labels, list(counts.values()), rng)
    out = {}
    for split, idx in zip(counts, parts):
        x = np.ascontiguousarray(pixels[idx])[:, :, None]
        out[split] = SequenceDataset(equal_length_inputs(x), labels[idx])
    return out


def build(**options) -> Task:
    opts = {**DEFAULT_OPTIONS, **options}
    return Task(
        name=NAME,
        description="sequential 8x8 digits (scikit-learn), pixel by pixel, optionally permuted (10 classes)",
        kind="classification",
        metric="accuracy",
        input_dim=1,
        output_dim=10,
        generator=_generate,
        model_defaults=model_defaults(
            hidden_size=64,
            state_size=64,
            blocks=4,
            num_layers=4,
            dropout=0.1,
            pooling="mean",
        ),
        train_defaults=dict(epochs=50, batch_size=32, ssm_lr=0.002, lr_factor=4, weight_decay=0.01, warmup_epochs=1),
        options=opts,
        bound_options=dict(options),
        sizes={
            "default": {"splits": (1257, 180, 360)},
            "tiny": {"splits": (60, 20, 20)},
        },
    )
