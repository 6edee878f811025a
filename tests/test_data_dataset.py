"""SequenceDataset validation, collate (padding, mask, step_scale), seeded_split."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s5ssm.data import SequenceDataset, collate, seeded_split, step_scale_from_timestamps


def feats(*lengths, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((n, d)).astype(np.float32) for n in lengths]


# ----------------------------------------------------------------------------- validation
def test_valid_dataset_and_dtype_normalisation():
    inputs = [np.ones((4, 2)), np.zeros((2, 2))]  # float64 in
    ds = SequenceDataset(inputs, np.array([0, 3], dtype=np.int32), [np.arange(4) * 1.0, np.array([0.0, 2.5])])
    assert all(x.dtype == np.float32 for x in ds.inputs)
    assert ds.targets.dtype == np.int64 and ds.kind == "classification"
    assert ds.timestamps[0].dtype == np.float64
    assert ds.lengths.tolist() == [4, 2] and ds.input_dim == 2 and not ds.is_tokens
    assert len(ds) == 2 and "N=2" in repr(ds)


def test_regression_targets_1d_become_column():
    ds = SequenceDataset(feats(3, 5), np.array([0.5, 1.5]))
    assert ds.targets.shape == (2, 1) and ds.targets.dtype == np.float32 and ds.kind == "regression"


def test_token_inputs():
    ds = SequenceDataset([np.array([1, 2, 3], dtype=np.int32), np.array([4])], np.array([1, 0]))
    assert ds.is_tokens and ds.input_dim is None and ds.inputs[0].dtype == np.int64


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: SequenceDataset([], np.zeros(0, np.int64)), r"inputs: the dataset has no sequences"),
        (lambda: SequenceDataset(np.zeros((2, 3, 1)), np.zeros(2, np.int64)), r"inputs: expected a list"),
        (lambda: SequenceDataset(feats(3, 4, d=2) + feats(2, d=3), np.zeros(3, np.int64)), r"inputs\[2\]: has D=3"),
        (
            lambda: SequenceDataset([np.zeros((3, 1)), np.zeros(3)], np.zeros(2, np.int64)),
            r"inputs\[1\]: feature sequences must be 2-D",
        ),
        (lambda: SequenceDataset([np.zeros((0, 1))], np.zeros(1, np.int64)), r"inputs\[0\]: empty sequence"),
        (
            lambda: SequenceDataset([np.zeros((2, 1)), np.array([[np.nan]])], np.zeros(2, np.int64)),
            r"inputs\[1\]: contains NaN or Inf",
        ),
        (
            lambda: SequenceDataset([np.zeros((2, 1)), np.array([[np.inf]])], np.zeros(2, np.int64)),
            r"inputs\[1\]: contains NaN or Inf",
        ),
        (
            lambda: SequenceDataset([np.array([1, 2]), np.zeros((2, 1))], np.zeros(2, np.int64)),
            r"inputs\[1\]: .*mixing tokens",
        ),
        (lambda: SequenceDataset([np.array([1, -2])], np.zeros(1, np.int64)), r"inputs\[0\]: token ids must be >= 0"),
        (lambda: SequenceDataset([np.zeros((2, 1), dtype=bool)], np.zeros(1, np.int64)), r"inputs\[0\]: dtype bool"),
        (lambda: SequenceDataset(feats(2, 3), np.zeros(3, np.int64)), r"targets: expected first dim N=2"),
        (lambda: SequenceDataset(feats(2, 3), np.array([0, -1])), r"targets\[1\]: class labels must be >= 0"),
        (
            lambda: SequenceDataset(feats(2, 3), np.zeros((2, 2), np.int64)),
            r"targets: integer class labels must be \(N,\)",
        ),
        (lambda: SequenceDataset(feats(2, 3), np.array([[0.0], [np.nan]])), r"targets\[1\]: contains NaN or Inf"),
        (
            lambda: SequenceDataset(feats(2, 3), np.zeros((2, 2, 1), np.float32)),
            r"targets: per-step targets cover L=2 steps but inputs\[1\] has length 3",
        ),
        (lambda: SequenceDataset(feats(2, 3), np.array(["a", "b"])), r"targets: dtype"),
        (
            lambda: SequenceDataset(feats(2, 3), np.zeros(2, np.int64), [np.arange(2.0)]),
            r"timestamps: 1 arrays for 2 sequences",
        ),
        (
            lambda: SequenceDataset(feats(2, 3), np.zeros(2, np.int64), [np.arange(2.0), np.arange(2.0)]),
            r"timestamps\[1\]: shape \(2,\) does not match",
        ),
        (
            lambda: SequenceDataset(feats(2, 3), np.zeros(2, np.int64), [np.arange(2.0), np.array([0.0, 1.0, 1.0])]),
            r"timestamps\[1\]: not strictly increasing at step 2",
        ),
        (
            lambda: SequenceDataset(feats(2, 3), np.zeros(2, np.int64), [np.arange(2.0), np.array([0.0, np.nan, 1.0])]),
            r"timestamps\[1\]: contains NaN",
        ),
    ],
)
def test_validation_errors_name_field_and_index(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_getitem_subset_and_pickle():
    ds = SequenceDataset(feats(2, 3, 4), np.array([0, 1, 2]), [np.arange(2.0), np.arange(3.0), np.arange(4.0)])
    item = ds[-1]
    assert set(item) == {"x", "y", "t"} and item["x"].shape == (4, 3) and int(item["y"]) == 2
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(TypeError):
        ds[0:2]
    sub = ds.subset([2, 0])
    assert sub.targets.tolist() == [2, 0] and sub.lengths.tolist() == [4, 2]
    assert ds.subset(np.array([True, False, True])).targets.tolist() == [0, 2]
    with pytest.raises(ValueError, match="indices"):
        ds.subset([5])
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone.inputs[1], ds.inputs[1]) and np.array_equal(clone.timestamps[2], ds.timestamps[2])
    item2 = pickle.loads(pickle.dumps(ds[1]))
    assert np.array_equal(item2["x"], ds.inputs[1])


# ----------------------------------------------------------------------------- collate
def test_collate_pads_features_right_and_masks():
    ds = SequenceDataset(feats(3, 5, 1), np.array([2, 0, 1]))
    batch = collate([ds[i] for i in range(3)])
    assert batch["x"].dtype == torch.float32 and batch["x"].shape == (3, 5, 3)
    assert batch["mask"].dtype == torch.bool and batch["mask"].sum(1).tolist() == [3, 5, 1]
    assert batch["lengths"].tolist() == [3, 5, 1]
    assert batch["y"].dtype == torch.int64 and batch["y"].tolist() == [2, 0, 1]
    assert torch.equal(batch["x"][0, :3], torch.from_numpy(ds.inputs[0]))
    assert (batch["x"][0, 3:] == 0).all() and (batch["x"][2, 1:] == 0).all()
    assert "step_scale" not in batch


def test_collate_tokens_and_regression():
    ds = SequenceDataset([np.array([3, 1]), np.array([5, 6, 7, 8])], np.array([[0.5, 1.0], [2.0, 3.0]]))
    batch = collate([ds[0], ds[1]])
    assert batch["x"].dtype == torch.int64 and batch["x"].tolist() == [[3, 1, 0, 0], [5, 6, 7, 8]]
    assert batch["y"].dtype == torch.float32 and batch["y"].shape == (2, 2)


def test_collate_per_step_targets_padded_and_zeroed():
    y = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2) + 1
    ds = SequenceDataset(feats(2, 4, d=1), y)
    batch = collate([ds[0]])
    assert batch["y"].shape == (1, 2, 2) and torch.equal(batch["y"][0], torch.from_numpy(y[0, :2]))
    batch = collate([ds[0], ds[1]])
    assert batch["y"].shape == (2, 4, 2)
    assert (batch["y"][0, 2:] == 0).all() and torch.equal(batch["y"][1], torch.from_numpy(y[1]))


def test_collate_step_scale_rule():
    ts = [np.array([0.0, 1.0, 3.0, 4.0]), np.array([7.5]), np.array([2.0, 2.5])]
    ds = SequenceDataset(feats(4, 1, 2), np.zeros(3, np.int64), ts)
    scale = collate([ds[0], ds[1], ds[2]])["step_scale"]
    assert scale.dtype == torch.float32 and scale.shape == (3, 4)
    # first step: median gap of the sequence (median of 1, 2, 1 = 1); length 1 -> 1.0; padding 1.0
    assert scale[0].tolist() == [1.0, 1.0, 2.0, 1.0]
    assert scale[1].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert scale[2].tolist() == [0.5, 0.5, 1.0, 1.0]
    assert step_scale_from_timestamps(np.array([0.0, 3.0, 4.0, 10.0])).tolist() == [3.0, 3.0, 1.0, 6.0]


def test_collate_pad_to_and_no_truncation():
    ds = SequenceDataset(feats(3, 5), np.array([0, 1]))
    assert collate([ds[0], ds[1]], pad_to=8)["x"].shape == (2, 8, 3)
    with pytest.raises(ValueError, match="refusing to truncate"):
        collate([ds[0], ds[1]], pad_to=4)


def test_collate_rejects_inconsistent_items():
    a = SequenceDataset(feats(3, d=2), np.array([0]))[0]
    b = SequenceDataset(feats(3, d=3), np.array([0]))[0]
    c = SequenceDataset(feats(3, d=2), np.array([0]), [np.arange(3.0)])[0]
    with pytest.raises(ValueError, match=r"items\[1\]: 'x' has D=3"):
        collate([a, b])
    with pytest.raises(ValueError, match=r"items\[1\]: timestamps present"):
        collate([a, c])
    with pytest.raises(ValueError, match="non-empty"):
        collate([])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=6), st.booleans())
def test_collate_roundtrip_property(lengths, tokens):
    rng = np.random.default_rng(len(lengths))
    if tokens:
        inputs = [rng.integers(1, 9, size=n) for n in lengths]
    else:
        inputs = [rng.standard_normal((n, 2)).astype(np.float32) for n in lengths]
    times = [np.cumsum(rng.uniform(0.1, 2.0, size=n)) for n in lengths]
    ds = SequenceDataset(inputs, rng.integers(0, 3, size=len(lengths)), times)
    batch = collate([ds[i] for i in range(len(ds))])
    assert batch["x"].shape[1] == max(lengths)
    for i, n in enumerate(lengths):
        assert torch.equal(batch["x"][i, :n], torch.from_numpy(ds.inputs[i]))
        assert (batch["x"][i, n:] == 0).all()
        assert batch["mask"][i].sum() == n and batch["mask"][i, :n].all()
        np.testing.assert_allclose(batch["step_scale"][i, 1:n].numpy(), np.diff(times[i]), rtol=1e-6)
        assert (batch["step_scale"][i, n:] == 1).all() and batch["step_scale"][i, 0] > 0


def test_dataloader_with_distributed_sampler():
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    ds = SequenceDataset(feats(*range(1, 11), d=2), np.arange(10) % 3)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        for batch in DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate):
            assert batch["x"].shape[0] == batch["mask"].shape[0] == batch["y"].shape[0]
            seen.extend(batch["lengths"].tolist())
    assert sorted(seen) == list(range(1, 11))


# ----------------------------------------------------------------------------- split
def test_seeded_split_deterministic_disjoint_and_complete():
    ds = SequenceDataset(feats(*([2] * 50), d=1), np.arange(50) % 5)
    a1, b1 = seeded_split(ds, 0.2, seed=3)
    a2, b2 = seeded_split(ds, 0.2, seed=3)
    a3, _ = seeded_split(ds, 0.2, seed=4)
    assert len(a1) == 10 and len(b1) == 40
    key = lambda d: sorted(float(x[0, 0]) for x in d.inputs)  # noqa: E731
    assert key(a1) == key(a2) and key(b1) == key(b2) and key(a1) != key(a3)
    assert sorted(key(a1) + key(b1)) == key(ds)


def test_seeded_split_stratified():
    ds = SequenceDataset(feats(*([2] * 60), d=1), np.repeat([0, 1, 2], [30, 20, 10]))
    a, b = seeded_split(ds, 0.5, seed=0, stratify=True)
    assert np.bincount(a.targets).tolist() == [15, 10, 5]
    with pytest.raises(ValueError, match="stratify"):
        seeded_split(SequenceDataset(feats(2, 2), np.array([0.0, 1.0])), 0.5, 0, stratify=True)


@pytest.mark.parametrize("n_classes, per_class, fraction", [(10, 5, 0.2), (10, 5, 0.1), (3, 12, 0.2), (7, 2, 0.5)])
def test_seeded_split_small_sets_with_many_classes(n_classes, per_class, fraction):
    """N=50 with 10 classes (PickupGestureWiimoteZ's size) and other tiny sets: both parts
    non-empty, the count is round(fraction * N), and the second part sees every class."""
    n = n_classes * per_class
    labels = np.arange(n) % n_classes
    ds = SequenceDataset(feats(*([2] * n), d=1), labels)
    a, b = seeded_split(ds, fraction, seed=1, stratify=True)
    assert len(a) == max(1, round(fraction * n)) and len(a) + len(b) == n
    assert sorted(set(b.targets.tolist())) == list(range(n_classes))
    counts = np.bincount(a.targets, minlength=n_classes)
    assert counts.max() - counts.min() <= 1  # as even as whole items allow


def test_seeded_split_keeps_singleton_classes_in_the_second_part():
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 2])  # classes 1 and 2 have one item each
    ds = SequenceDataset(feats(*([2] * 8), d=1), labels)
    for seed in range(5):
        a, b = seeded_split(ds, 0.25, seed=seed, stratify=True)
        assert a.targets.tolist() == [0, 0] and {1, 2} <= set(b.targets.tolist())


@pytest.mark.parametrize("fraction, seed, match", [(0.0, 0, "fraction"), (1.0, 0, "fraction"), (0.5, -1, "seed")])
def test_seeded_split_errors(fraction, seed, match):
    ds = SequenceDataset(feats(2, 2, 2), np.array([0, 1, 0]))
    with pytest.raises(ValueError, match=match):
        seeded_split(ds, fraction, seed)


def test_seeded_split_tiny_fractions_keep_one_item_per_part():
    ds = SequenceDataset(feats(2, 2, 2), np.array([0, 1, 0]))
    a, b = seeded_split(ds, 0.01, seed=0)
    assert (len(a), len(b)) == (1, 2)
    with pytest.raises(ValueError, match="N=1"):
        seeded_split(SequenceDataset(feats(2), np.array([0])), 0.5, seed=0)
