"""ListOps (Nangia & Bowman 2018) as in the Long Range Arena (Tay et al. 2020).

Generator (mirrors lra_benchmarks/data/listops.py): a tree is grown from depth 1; below
``max_depth`` a node is an operator with probability 0.25, else a digit 0..9 (at
``max_depth`` always a digit). An operator, uniform over [MIN, [MAX, [MED, [SM, takes
2..``max_args`` arguments (uniform), each a subtree one level deeper, and is closed by
"]". Its value: MIN / MAX of the arguments, MED = int(numpy.median) (the floor of the
mean of the two middle values for an even count), SM = sum mod 10. Trees whose length
(operators + digits + "]", parentheses not counted, as in LRA) lies outside
[``min_length``, ``max_length``] are rejected; duplicate token sequences are dropped
within a split. The label is the value of the tree: 10 classes.

Tokens (vocab_size 18, id 0 is padding, never produced):
    1..10   digits 0..9 (id = digit + 1)
    11 [MIN   12 [MAX   13 [MED   14 [SM   15 ]   16 (   17 )
With ``parens=False`` (default) the parentheses are left out: this is the tokenisation of
the S4/S5 LRA pipelines (which strip "(" and ")" from the LRA text), and then the
sequence length equals the tree length. With ``parens=True`` the sequence is LRA's text
token by token, including the "(" ")" of its binary-tree serialisation
("( ( ( [MAX 2 ) 9 ) ] )" for [MAX 2 9]), about twice as long; the length limits still
apply to the tree length, as in LRA.

LRA's defaults: max_depth 10, max_args 10, lengths 500..2000, 96k / 2k / 2k sequences
(size="lra", about 80 s to generate once). Default size here: 20,000 / 2,000 / 2,000
(about 20 s); tiny: 48 / 16 / 16 with lengths 10..60 and max_depth 5. Generated splits
are cached as .npz under ``cache_dir`` (default ``~/.cache/s5ssm/listops`` or
$S5SSM_CACHE; ``cache_dir=None`` disables it), keyed by every option, the sizes and the
seed. Options: min_length, max_length, max_depth, max_args, parens, cache_dir.

``evaluate_tokens`` is the evaluator used for the labels (a stack machine over tokens).
"""

from __future__ import annotations

import numpy as np

from ..dataset import SequenceDataset
from .base import Task, cached_arrays, default_cache_dir, model_defaults, split_rng

NAME = "listops"
GENERATOR_VERSION = 1
DEFAULT_OPTIONS = {
    "min_length": 500,
    "max_length": 2000,
    "max_depth": 10,
    "max_args": 10,
    "parens": False,
    "cache_dir": "default",
}

PAD = 0
DIGIT_BASE = 1
MIN, MAX, MED, SM = 11, 12, 13, 14
CLOSE, LPAREN, RPAREN = 15, 16, 17
VOCAB_SIZE = 18
OPERATORS = (MIN, MAX, MED, SM)
TOKEN_NAMES = {PAD: "<pad>", MIN: "[MIN", MAX: "[MAX", MED: "[MED", SM: "[SM", CLOSE: "]", LPAREN: "(", RPAREN: ")"}
TOKEN_NAMES.update({DIGIT_BASE + d: str(d) for d in range(10)})
VALUE_P = 0.25  # probability that a node above max_depth is an operator (LRA's VALUE_P)


def apply_operator(op: int, args: list[int]) -> int:
    """The value of one operator token applied to its digit arguments."""
    if op == MIN:
        return min(args)
    if op == MAX:
        return max(args)
    if op == MED:
        return int(np.median(args))
    if op == SM:
        return sum(args) % 10
    raise ValueError(f"not an operator token: {op}")


def evaluate_tokens(tokens) -> int:
    """Evaluate one expression's token ids (parentheses and padding ignored); returns 0..9.

    A stack machine: an operator opens a frame, a digit or a closed sub-expression is
    appended to the innermost frame, "]" applies the frame's operator. Raises ValueError
    on a malformed sequence.
    """
    stack: list[list[int]] = []
    value = None
    for tok in np.asarray(tokens).tolist():
        if tok in (PAD, LPAREN, RPAREN):
            continue
        if value is not None and not stack:
            raise ValueError("tokens after the end of the expression")
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == CLOSE:
            if not stack or len(stack[-1]) < 2:
                raise ValueError("']' without an open operator and an argument")
            op, *args = stack.pop()
            result = apply_operator(op, args)
            if stack:
                stack[-1].append(result)
            else:
                value = result
        elif DIGIT_BASE <= tok < DIGIT_BASE + 10:
            if stack:
                stack[-1].append(tok - DIGIT_BASE)
            else:
                value = tok - DIGIT_BASE
        else:
            raise ValueError(f"unknown token id {tok}")
    if stack or value is None:
        raise ValueError("unbalanced or empty expression")
    return value


def tokens_to_text(tokens) -> str:
    """LRA-style text of a token sequence, e.g. '[MAX 2 9 ]'."""
    return " ".join(TOKEN_NAMES[t] for t in np.asarray(tokens).tolist() if t != PAD)


class _TooLong(Exception):
    pass


class _Uniforms:
    """Uniform [0, 1) numbers drawn from a numpy Generator in blocks (fast scalar access)."""

    def __init__(self, rng: np.random.Generator, block: int = 1 << 16):
        self.rng, self.block = rng, block
        self.buf: list[float] = []
        self.pos = 0

    def refill(self) -> None:
        self.buf = self.rng.random(self.block).tolist()
        self.pos = 0


def _grow(
    depth: int, max_depth: int, max_args: int, max_length: int, parens: bool, u: _Uniforms, out: list[int]
) -> int:
    """Append one subtree's tokens to `out`; return its value. Raises _TooLong past max_length."""
    if u.pos + 3 + max_args > len(u.buf):
        u.refill()
    buf = u.buf
    if depth < max_depth and buf[u.pos] <= VALUE_P:
        op = OPERATORS[int(buf[u.pos + 1] * 4)]
        n_args = 2 + int(buf[u.pos + 2] * (max_args - 1))
        u.pos += 3
        if parens:
            out.extend([LPAREN] * (n_args + 1))
        out.append(op)
        args = []
        for _ in range(n_args):
            args.append(_grow(depth + 1, max_depth, max_args, max_length, parens, u, out))
            if parens:
                out.append(RPAREN)
        out.append(CLOSE)
        if parens:
            out.append(RPAREN)
        if op == MIN:
            return min(args)
        if op == MAX:
            return max(args)
        if op == SM:
            return sum(args) % 10
        args.sort()
        mid = n_args // 2
        return args[mid] if n_args % 2 else (args[mid - 1] + args[mid]) // 2
    value = int(buf[u.pos + 1] * 10)
    u.pos += 2
    out.append(DIGIT_BASE + value)
    if len(out) > max_length:
        raise _TooLong
    return value


def generate_listops(
    n: int,
    rng: np.random.Generator,
    *,
    min_length: int = 500,
    max_length: int = 2000,
    max_depth: int = 10,
    max_args: int = 10,
    parens: bool = False,
    max_attempts: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray]:
    """n distinct ListOps expressions: token arrays int64 (L_i,) and labels int64 (n,) in 0..9.

    Rejection sampling as in LRA; a tree is abandoned as soon as it grows past
    max_length (it would be rejected anyway), which keeps generation fast.
    """
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got min_length={min_length}, max_length={max_length}")
    if max_depth < 1:
        raise ValueError(f"max_depth must be >= 1, got {max_depth}")
    if max_args < 2:
        raise ValueError(f"max_args must be >= 2, got {max_args}")
    if max_attempts is None:
        max_attempts = 10_000 + 2_000 * n
    u = _Uniforms(rng)
    u.refill()
    seen: set[bytes] = set()
    sequences, labels = [], []
    # With parentheses the tree length is counted without them: bound the token list by
    # the worst case (each operator of k args adds 2k + 3 parentheses; k <= max_args).
    cap = max_length if not parens else 4 * max_length
    attempts = 0
    while len(sequences) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(
                f"could not generate {n} ListOps trees of length {min_length}..{max_length} with "
                f"max_depth={max_depth}, max_args={max_args} in {max_attempts} attempts; widen the limits"
            )
        out: list[int] = []
        try:
            value = _grow(1, max_depth, max_args, cap, parens, u, out)
        except _TooLong:
            continue
        tokens = np.asarray(out, dtype=np.int64)
        length = int(np.count_nonzero(tokens < LPAREN)) if parens else len(out)
        if not min_length <= length <= max_length:
            continue
        key = tokens.astype(np.uint8).tobytes()
        if key in seen:
            continue
        seen.add(key)
        sequences.append(tokens)
        labels.append(value)
    return sequences, np.asarray(labels, dtype=np.int64)


def _generate(
    seed: int,
    counts: dict[str, int],
    *,
    min_length: int,
    max_length: int,
    max_depth: int,
    max_args: int,
    parens: bool,
    cache_dir,
) -> dict[str, SequenceDataset]:
    params = dict(
        min_length=min_length, max_length=max_length, max_depth=max_depth, max_args=max_args, parens=bool(parens)
    )
    for key in ("min_length", "max_length", "max_depth", "max_args"):
        value = params[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{key} must be an int, got {value!r}")
    if cache_dir == "default":
        cache_dir = default_cache_dir()

    def build() -> dict[str, np.ndarray]:
        arrays = {}
        for split, n in counts.items():
            seqs, labels = generate_listops(n, split_rng(seed, split), **params)
            arrays[f"{split}_x"] = np.concatenate(seqs).astype(np.uint8)
            arrays[f"{split}_lengths"] = np.fromiter(map(len, seqs), dtype=np.int64, count=n)
            arrays[f"{split}_y"] = labels
        return arrays

    arrays = cached_arrays(NAME, dict(version=GENERATOR_VERSION, seed=seed, counts=counts, **params), build, cache_dir)
    out = {}
    for split in counts:
        flat = arrays[f"{split}_x"].astype(np.int64)
        inputs = np.split(flat, np.cumsum(arrays[f"{split}_lengths"])[:-1])
        out[split] = SequenceDataset(inputs, arrays[f"{split}_y"])
    return out


def build(**options) -> Task:
    opts = {**DEFAULT_OPTIONS, **options}
    return Task(
        name=NAME,
        description="LRA ListOps: evaluate nested [MAX/[MIN/[MED/[SM expressions over digits (10 classes)",
        kind="classification",
        metric="accuracy",
        vocab_size=VOCAB_SIZE,
        output_dim=10,
        generator=_generate,
        # lindermanlab/S5 bin/run_experiments/run_lra_listops.sh
        model_defaults=model_defaults(
            hidden_size=128,
            state_size=16,
            blocks=8,
            num_layers=8,
            pooling="mean",
            activation="half_glu2",
            bidirectional=True,
            C_init="lecun_normal",
        ),
        train_defaults=dict(epochs=40, batch_size=50, ssm_lr=0.001, lr_factor=3, weight_decay=0.04, warmup_epochs=1),
        options=opts,
        bound_options=dict(options),
        sizes={
            "default": {"splits": (20000, 2000, 2000)},
            "lra": {"splits": (96000, 2000, 2000)},
            "tiny": {
                "splits": (48, 16, 16),
                "options": {"min_length": 10, "max_length": 60, "max_depth": 5, "cache_dir": None},
            },
        },
    )
