"""The copy-memory task (Arjovsky, Shah & Bengio 2016), framed as recall of one queried symbol.

Arjovsky et al. show 10 symbols from {1..8}, then T blanks, a delimiter, and ask for the
10 symbols back during the last 10 steps (per-step outputs). To fit a sequence-level
classifier scored by accuracy, each sequence here asks for ONE of the 10 symbols:

    tokens, int64 (L,) with L = length + 11:
        s_0 ... s_9            the 10 symbols, uniform in 1..8
        0 x length             blanks (the delay T = ``length``)
        9 + q                  the query token: "recall the symbol at position q", q in 0..9
    target: int64 class s_q - 1 in 0..7 (8 classes; chance accuracy 1/8)

The query position is unknown until the last step, so the model must carry all 10
symbols across the delay, as in the original task; the answer is read from the final
step (pooling "last"). Vocabulary (vocab_size 19): 0 blank, 1..8 symbols, 9..18 queries.
The class counts are balanced exactly (targets are a shuffled cycle of the 8 classes).

Options: ``length`` = T, the number of blanks (default 1000; "tiny" uses 20).
Sizes: default 20,000 / 2,000 / 2,000, tiny 48 / 16 / 16.
"""

from __future__ import annotations

import numpy as np

from ..dataset import SequenceDataset
from .base import Task, equal_length_inputs, model_defaults, split_rng

NAME = "copying"
DEFAULT_OPTIONS = {"length": 1000}
NUM_SYMBOLS = 8
NUM_COPIED = 10
BLANK = 0
QUERY_BASE = NUM_SYMBOLS + 1  # query token for position q is QUERY_BASE + q
VOCAB_SIZE = QUERY_BASE + NUM_COPIED


def generate_copying(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n sequences: tokens int64 (n, length + 11), targets int64 (n,) in 0..7 (balanced)."""
    if length < 0:
        raise ValueError(f"length (the delay) must be >= 0, got {length}")
    total = NUM_COPIED + length + 1
    x = np.zeros((n, total), dtype=np.int64)
    symbols = rng.integers(1, NUM_SYMBOLS + 1, size=(n, NUM_COPIED))
    query = rng.integers(0, NUM_COPIED, size=n)
    target = rng.permutation(np.arange(n) % NUM_SYMBOLS)
    symbols[np.arange(n), query] = target + 1
    x[:, :NUM_COPIED] = symbols
    x[:, -1] = QUERY_BASE + query
    return x, target.astype(np.int64)


def _generate(seed: int, counts: dict[str, int], *, length: int) -> dict[str, SequenceDataset]:
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise ValueError(f"length must be an int, got {length!r}")
    out = {}
    for split, n in counts.items():
        x, y = generate_copying(n, int(length), split_rng(seed, split))
        out[split] = SequenceDataset(equal_length_inputs(x), y)
    return out


def build(**options) -> Task:
    opts = {**DEFAULT_OPTIONS, **options}
    return Task(
        name=NAME,
        description="copy memory: recall one of 10 symbols shown before a long blank delay (8 classes)",
        kind="classification",
        metric="accuracy",
        vocab_size=VOCAB_SIZE,
        output_dim=NUM_SYMBOLS,
        generator=_generate,
        model_defaults=model_defaults(
            hidden_size=64,
            state_size=64,
            blocks=4,
            num_layers=4,
            pooling="last",
            norm="layer",
        ),
        train_defaults=dict(epochs=30, batch_size=64, ssm_lr=0.001, lr_factor=4, weight_decay=0.01, warmup_epochs=1),
        options=opts,
        bound_options=dict(options),
        sizes={
            "default": {"splits": (20000, 2000, 2000)},
            "tiny": {"splits": (48, 16, 16), "options": {"length": 20}},
        },
    )
