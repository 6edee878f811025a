"""ListOps: every label re-checked by an evaluator written here, independent of the generator's."""

from __future__ import annotations


import numpy as np
import pytest

from s5ssm.data import get_task
from s5ssm.data.tasks import listops

# The token table, restated from the LRA text conventions rather than imported.
NAMES = {0: "<pad>", 11: "[MIN", 12: "[MAX", 13: "[MED", 14: "[SM", 15: "]", 16: "(", 17: ")"}
NAMES.update({d + 1: str(d) for d in range(10)})


def parse(text_tokens: list[str]):
    """Recursive-descent parse of LRA text tokens (no parentheses) into a nested tree."""
    pos = 0

    def node():
        nonlocal pos
        tok = text_tokens[pos]
        pos += 1
        if tok.isdigit():
            return int(tok)
        assert tok in ("[MIN", "[MAX", "[MED", "[SM"), tok
        args = []
        while text_tokens[pos] != "]":
            args.append(node())
        pos += 1
        return (tok, args)

    tree = node()
    assert pos == len(text_tokens), "trailing tokens"
    return tree


def value(tree) -> int:
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = sorted(value(a) for a in args)
    if op == "[MIN":
        return vals[0]
    if op == "[MAX":
        return vals[-1]
    if op == "[SM":
        return sum(vals) % 10
    k = len(vals)  # [MED: numpy.median then int(): floor of the middle pair's mean
    return vals[k // 2] if k % 2 else (vals[k // 2 - 1] + vals[k // 2]) // 2


def depth(tree) -> int:
    return 1 if isinstance(tree, int) else 1 + max(depth(a) for a in tree[1])


def tree_length(tree) -> int:
    return 1 if isinstance(tree, int) else 2 + sum(tree_length(a) for a in tree[1])


def lra_text(tree) -> list[str]:
    """LRA's to_string: the binary-tree serialisation with '(' ')'."""
    if isinstance(tree, int):
        return [str(tree)]
    op, args = tree  # LRA builds t = (op, a0), then t = (t, a_k) for each next arg, then (t, "]")
    t = ["(", op] + lra_text(args[0]) + [")"]
    for a in args[1:]:
        t = ["("] + t + lra_text(a) + [")"]
    return ["("] + t + ["]", ")"]


def words(seq) -> list[str]:
    return [NAMES[int(t)] for t in seq if int(t) != 0]


def check(ds, *, min_length, max_length, max_depth, max_args, parens=False):
    keys = set()
    for seq, label in zip(ds.inputs, ds.targets):
        w = words(seq)
        tree = parse([x for x in w if x not in ("(", ")")])
        assert value(tree) == label
        assert min_length <= tree_length(tree) <= max_length
        assert depth(tree) <= max_depth
        stack = [tree]
        while stack:
            node = stack.pop()
            if not isinstance(node, int):
                assert 2 <= len(node[1]) <= max_args
                stack.extend(node[1])
        if parens:
            assert w == lra_text(tree)
        else:
            assert "(" not in w and ")" not in w and len(seq) == tree_length(tree)
        keys.add(tuple(seq.tolist()))
    assert len(keys) == len(ds)  # no duplicates within a split


def test_lra_text_helper_matches_the_lra_example():
    assert " ".join(lra_text(("[SM", [2, 6, 5]))) == "( ( ( ( [SM 2 ) 6 ) 5 ) ] )"


def test_tiny_labels_independently():
    task = get_task("listops")
    assert task.vocab_size == 18 and task.output_dim == 10
    opts = task.sizes["tiny"]["options"]
    for ds in task.make(0, "tiny").values():
        check(
            ds, min_length=opts["min_length"], max_length=opts["max_length"], max_depth=opts["max_depth"], max_args=10
        )


def test_parens_mirror_lra_text():
    ds = get_task("listops", parens=True).make(1, "tiny")["train"]
    check(ds, min_length=10, max_length=60, max_depth=5, max_args=10, parens=True)


def test_default_lengths_labels():
    """LRA settings (lengths 500..2000, depth 10, 10 args): labels and bounds."""
    seqs, labels = listops.generate_listops(600, np.random.default_rng(7))
    from s5ssm.data import SequenceDataset

    check(SequenceDataset(seqs, labels), min_length=500, max_length=2000, max_depth=10, max_args=10)
    assert len(np.unique(labels)) == 10


def test_generator_evaluator_agrees_and_rejects_bad_input():
    seqs, labels = listops.generate_listops(
        50, np.random.default_rng(0), min_length=5, max_length=80, max_depth=6, max_args=4
    )
    assert all(listops.evaluate_tokens(s) == y for s, y in zip(seqs, labels))
    for bad in ([12, 1], [12, 1, 2], [15], [12, 1, 2, 15, 3], [99]):
        with pytest.raises(ValueError):
            listops.evaluate_tokens(bad)
    assert listops.tokens_to_text([12, 3, 10, 15]) == "[MAX 2 9 ]"


def test_option_errors_and_cache(tmp_path):
    with pytest.raises(ValueError, match="min_length"):
        listops.generate_listops(1, np.random.default_rng(0), min_length=10, max_length=5)
    with pytest.raises(ValueError, match="could not generate"):
        listops.generate_listops(
            5, np.random.default_rng(0), min_length=3, max_length=3, max_depth=2, max_args=2, max_attempts=200
        )
    task = get_task("listops", min_length=10, max_length=40, max_depth=4, cache_dir=str(tmp_path))
    first = task.make(0, (5, 3, 3))
    files = sorted(p.name for p in (tmp_path / "listops").iterdir())
    assert len([f for f in files if f.endswith(".npz")]) == 1
    again = task.make(0, (5, 3, 3))
    for split in first:
        assert all(np.array_equal(a, b) for a, b in zip(first[split].inputs, again[split].inputs))
        assert np.array_equal(first[split].targets, again[split].targets)
