"""Built-in tasks: registry, sizes and options, determinism, shapes; adding, copying, digits."""

from __future__ import annotations

import numpy as np
import pytest

from s5ssm.data import SequenceDataset, collate, get_task, list_tasks
from s5ssm.data.tasks import TASKS, Task

NAMES = ["adding", "copying", "digits", "listops", "pendulum", "pathfinder"]
MODEL_KEYS = {
    "hidden_size",
    "state_size",
    "num_layers",
    "blocks",
    "dropout",
    "pooling",
    "norm",
    "prenorm",
    "activation",
    "bidirectional",
    "C_init",
    "dt_min",
    "dt_max",
    "clip_eigs",
}
TRAIN_KEYS = {"epochs", "batch_size", "ssm_lr", "lr_factor", "weight_decay", "warmup_epochs"}


@pytest.fixture(scope="module")
def tiny():
    """Each task at tiny size, seeds 0, 0 again and 1 (made once for the module)."""
    out = {}
    for name in NAMES:
        task = get_task(name)
        out[name] = (task, task.make(0, "tiny"), task.make(0, "tiny"), task.make(1, "tiny"))
    return out


def arrays_of(ds: SequenceDataset):
    yield from ds.inputs
    yield ds.targets
    if ds.timestamps is not None:
        yield from ds.timestamps


def test_registry():
    names = [name for name, _ in list_tasks()]
    assert names == sorted(NAMES) and set(TASKS) == set(NAMES)
    assert all(isinstance(desc, str) and desc and "\n" not in desc for _, desc in list_tasks())
    with pytest.raises(ValueError, match="unknown task 'mnist'"):
        get_task("mnist")
    with pytest.raises(ValueError, match="adding: unknown option 'lenght'"):
        get_task("adding", lenght=10)


@pytest.mark.parametrize("name", NAMES)
def test_task_metadata(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name
    assert task.kind in ("classification", "regression")
    assert task.metric == ("accuracy" if task.kind == "classification" else "mse")
    assert (task.input_dim is None) != (task.vocab_size is None)
    assert MODEL_KEYS <= set(task.model_defaults) and TRAIN_KEYS <= set(task.train_defaults)
    assert task.model_defaults["pooling"] == ("none" if task.per_step else task.model_defaults["pooling"])
    assert task.model_defaults["state_size"] % task.model_defaults["blocks"] == 0
    assert {"default", "tiny"} <= set(task.sizes)
    info = task.info
    assert info["output_dim"] == task.output_dim and info["per_step"] == task.per_step


@pytest.mark.parametrize("name", NAMES)
def test_tiny_splits_shapes_and_dtypes(tiny, name):
    task, splits, _, _ = tiny[name]
    assert set(splits) == {"train", "val", "test"}
    counts = task.sizes["tiny"]["splits"]
    for (split, ds), count in zip(splits.items(), counts):
        assert isinstance(ds, SequenceDataset) and len(ds) == count, split
        if task.vocab_size is not None:
            assert ds.is_tokens
            assert all(x.dtype == np.int64 and x.min() >= 0 and x.max() < task.vocab_size for x in ds.inputs)
        else:
            assert all(x.dtype == np.float32 and x.shape[1] == task.input_dim for x in ds.inputs)
        if task.kind == "classification":
            assert ds.targets.dtype == np.int64 and ds.targets.min() >= 0 and ds.targets.max() < task.output_dim
        else:
            assert ds.targets.dtype == np.float32 and ds.targets.shape[-1] == task.output_dim
            assert ds.per_step == task.per_step
        batch = collate([ds[i] for i in range(min(4, len(ds)))])
        assert batch["mask"].any(dim=1).all()
        assert ("step_scale" in batch) == (ds.timestamps is not None)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_determinism(tiny, name):
    _, a, b, c = tiny[name]
    for split in a:
        for u, v in zip(arrays_of(a[split]), arrays_of(b[split])):
            assert u.dtype == v.dtype and np.array_equal(u, v)
    differs = any(
        len(u) != len(v) or not np.array_equal(u, v)
        for split in a
        for u, v in zip(arrays_of(a[split]), arrays_of(c[split]))
    )
    assert differs, "seed 1 gave the same data as seed 0"


@pytest.mark.parametrize("name", NAMES)
def test_splits_are_independent_streams(name):
    """Changing the train size leaves validation and test unchanged."""
    task = get_task(name)
    tiny_options = task.sizes["tiny"].get("options", {})
    a = task.make(3, (8, 6, 6), **tiny_options)
    b = task.make(3, (10, 6, 6), **tiny_options)
    if name == "digits":  # digits splits one fixed pool of images: a stratified draw of all three
        assert len(a["val"]) == len(b["val"]) == 6
        return
    for split in ("val", "test"):
        for u, v in zip(arrays_of(a[split]), arrays_of(b[split])):
            assert np.array_equal(u, v)


def test_size_forms_and_errors():
    task = get_task("adding", length=12)
    by_dict = task.make(0, {"train": 3, "val": 2, "test": 1})
    by_tuple = task.make(0, (3, 2, 1))
    assert [len(by_dict[s]) for s in ("train", "val", "test")] == [3, 2, 1]
    by_string = task.make(0, "3,2,1")  # the command line's --size
    assert np.array_equal(by_dict["train"].inputs[2], by_tuple["train"].inputs[2])
    assert np.array_equal(by_string["test"].inputs[0], by_tuple["test"].inputs[0])
    assert by_tuple["train"].lengths[0] == 12
    # explicitly bound options win over the size preset's options
    assert task.make(0, "tiny")["train"].lengths[0] == 12
    assert get_task("adding").make(0, "tiny")["train"].lengths[0] == 40
    assert get_task("adding").make(0, "tiny", length=7)["train"].lengths[0] == 7
    for bad, match in [
        ("huge", "unknown size 'huge'"),
        ((1, 2), "size must be a name"),
        ((0, 1, 1), "positive int"),
        ("3,x,1", "not three integers"),
        ("3,0,1", "positive int"),
        ({"train": 1, "val": 1}, "exactly the keys"),
    ]:
        with pytest.raises(ValueError, match=match):
            task.make(0, bad)
    with pytest.raises(ValueError, match="unknown option 'width'"):
        task.make(0, "tiny", width=3)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        task.make(-1, "tiny")
    with pytest.raises(ValueError, match="pass it to get_task"):
        get_task("pendulum").make(0, "tiny", image_size=16)
    assert get_task("pendulum", image_size=16).input_dim == 256


# ----------------------------------------------------------------------------- adding
def test_adding_markers_and_targets():
    splits = get_task("adding", length=30).make(5, (200, 1, 1))
    ds = splits["train"]
    x = np.stack(ds.inputs)
    assert x.shape == (200, 30, 2)
    assert ((x[:, :, 0] >= 0) & (x[:, :, 0] < 1)).all()
    markers = x[:, :, 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers[:, :15].sum(1) == 1).all() and (markers[:, 15:].sum(1) == 1).all()
    np.testing.assert_allclose(ds.targets[:, 0], (x[:, :, 0] * markers).sum(1), rtol=1e-6)


def test_adding_mean_predictor_baseline():
    ds = get_task("adding", length=10).make(0, (20000, 1, 1))["train"]
    mse = float(((ds.targets - 1.0) ** 2).mean())
    assert abs(mse - 1 / 6) < 0.01


# ----------------------------------------------------------------------------- copying
def test_copying_structure_and_labels():
    from s5ssm.data.tasks.copying import QUERY_BASE, VOCAB_SIZE

    task = get_task("copying", length=15)
    assert task.vocab_size == VOCAB_SIZE == 19 and task.output_dim == 8
    ds = task.make(2, (80, 8, 8))["train"]
    x = np.stack(ds.inputs)
    assert x.shape == (80, 26)
    assert ((x[:, :10] >= 1) & (x[:, :10] <= 8)).all()
    assert (x[:, 10:25] == 0).all()
    query = x[:, -1] - QUERY_BASE
    assert ((query >= 0) & (query < 10)).all()
    assert np.array_equal(ds.targets, x[np.arange(80), query] - 1)
    assert np.bincount(ds.targets, minlength=8).tolist() == [10] * 8  # exactly balanced


# ----------------------------------------------------------------------------- digits
def test_digits_default_splits_partition_the_images():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    splits = get_task("digits").make(0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1257, 180, 360]
    ours = np.concatenate([np.stack(d.inputs)[:, :, 0] for d in splits.values()])
    labels = np.concatenate([d.targets for d in splits.values()])
    bunch = load_digits()
    want = np.concatenate([bunch.data / 16.0, bunch.target[:, None]], axis=1)
    got = np.concatenate([ours, labels[:, None]], axis=1)
    # the three splits hold every (image, label) exactly once
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], want[np.lexsort(want.T[::-1])], atol=1e-6)
    # stratified: every class's share in train is within 1 image of its overall share
    overall = np.bincount(bunch.target) / len(bunch.target)
    assert np.abs(np.bincount(splits["train"].targets) - overall * 1257).max() <= 1.5
    assert ours.min() >= 0 and ours.max() <= 1


def test_digits_permuted_uses_one_fixed_permutation():
    pytest.importorskip("sklearn")
    from s5ssm.data.tasks.digits import pixel_permutation

    plain = get_task("digits").make(4, "tiny")
    perm = get_task("digits", permuted=True).make(4, "tiny")
    order = pixel_permutation(0)
    assert sorted(order.tolist()) == list(range(64)) and not np.array_equal(order, np.arange(64))
    for split in plain:
        assert np.array_equal(perm[split].targets, plain[split].targets)
        for a, b in zip(plain[split].inputs, perm[split].inputs):
            assert np.array_equal(b, a[order])
    with pytest.raises(ValueError, match="1797"):
        get_task("digits").make(0, (1500, 200, 200))


# Each task's effective model settings where they differ from the shared base
# (s5ssm.data.tasks.base.SHARED_MODEL_DEFAULTS): the base plus these is the whole dict.
EFFECTIVE_MODEL = {
    ("adding", 32): dict(hidden_size=64, state_size=64, blocks=4, num_layers=4, pooling="last"),
    ("copying", 32): dict(hidden_size=64, state_size=64, blocks=4, num_layers=4, pooling="last", norm="layer"),
    ("digits", 32): dict(hidden_size=64, state_size=64, blocks=4, num_layers=4, pooling="mean", dropout=0.1),
    ("listops", 32): dict(hidden_size=128, state_size=16, blocks=8, num_layers=8, pooling="mean",
                          activation="half_glu2", bidirectional=True, C_init="lecun_normal"),
    ("pendulum", 32): dict(encoder="conv", hidden_size=30, state_size=16, blocks=8, num_layers=4, pooling="none",
                           norm="layer", prenorm=False, activation="half_glu2", dt_min=0.01),
    ("pathfinder", 32): dict(hidden_size=192, state_size=256, blocks=8, num_layers=6, pooling="mean",
                             dropout=0.05, bidirectional=True),
    ("pathfinder", 64): dict(hidden_size=192, state_size=256, blocks=8, num_layers=6, pooling="mean",
                             dropout=0.05, bidirectional=True, dt_min=0.0001),
    ("pathfinder", 128): dict(hidden_size=128, state_size=256, blocks=16, num_layers=6, pooling="mean",
                              bidirectional=True, C_init="complex_normal", dt_min=0.0001),
}  # fmt: skip
BASE_MODEL = dict(dropout=0.0, norm="batch", prenorm=True, activation="half_glu1", bidirectional=False,
                  C_init="trunc_standard_normal", dt_min=0.001, dt_max=0.1, clip_eigs=False)  # fmt: skip
MODEL_ORDER = ["hidden_size", "state_size", "blocks", "num_layers", "dropout", "pooling", "norm", "prenorm",
               "activation", "bidirectional", "C_init", "dt_min", "dt_max", "clip_eigs"]  # fmt: skip


@pytest.mark.parametrize("name, resolution", list(EFFECTIVE_MODEL))
def test_task_model_defaults_are_the_shared_base_plus_the_task_settings(name, resolution):
    task = get_task(name, resolution=resolution) if name == "pathfinder" else get_task(name)
    want = {**BASE_MODEL, **EFFECTIVE_MODEL[name, resolution]}
    assert task.model_defaults == want
    extra = ["encoder"] if "encoder" in want else []
    assert list(task.model_defaults) == extra + MODEL_ORDER  # the order the config files show


def test_task_model_defaults_need_the_task_sizes():
    from s5ssm.data.tasks.base import model_defaults

    with pytest.raises(ValueError, match="must give its own state_size, pooling"):
        model_defaults(hidden_size=8, blocks=1, num_layers=1)
