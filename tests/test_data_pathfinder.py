"""Pathfinder: labels re-derived by a flood fill over the curve map, balance, cache."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from s5ssm.data import get_task
from s5ssm.data.tasks import pathfinder


def component(mask: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """8-connected flood fill of `mask` (bool R x R) from `start`."""
    R = mask.shape[0]
    seen = np.zeros_like(mask)
    if not mask[start]:
        return seen
    queue = deque([start])
    seen[start] = True
    while queue:
        r, c = queue.popleft()
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if 0 <= rr < R and 0 <= cc < R and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
    return seen


def check_labels(data, marker_radius: int) -> None:
    images, labels, curves, markers = data["images"], data["labels"], data["curves"], data["markers"]
    R = images.shape[1]
    for img, label, cmap, mk in zip(images, labels, curves, markers):
        on_curves = cmap > 0
        a, b = tuple(mk[0]), tuple(mk[1])
        assert on_curves[a] and on_curves[b], "markers must sit on curve pixels"
        # the label is exactly "the markers are 8-connected through curve pixels"
        assert bool(component(on_curves, a)[b]) == bool(label)
        # and the curves never touch each other: every component holds a single curve id
        for cid in np.unique(cmap[cmap > 0]):
            r, c = np.argwhere(cmap == cid)[0]
            assert set(np.unique(cmap[component(on_curves, (r, c))])) == {cid}
        # lit pixels are dashes of curves or the two marker squares; markers are lit
        allowed = on_curves.copy()
        for r, c in mk:
            allowed[
                max(r - marker_radius, 0) : r + marker_radius + 1, max(c - marker_radius, 0) : c + marker_radius + 1
            ] = True
            assert (
                img[
                    max(r - marker_radius, 0) : r + marker_radius + 1, max(c - marker_radius, 0) : c + marker_radius + 1
                ]
                == 255
            ).all()
        assert set(np.unique(img)) <= {0, 255}
        assert not (img[~allowed] > 0).any()
        # every curve shows some lit pixels
        for cid in np.unique(cmap[cmap > 0]):
            assert (img[cmap == cid] > 0).any()
    # dashes: curves are drawn with gaps (a short curve may fall entirely on one dash)
    lit_fraction = [
        (img[cmap == cid] > 0).mean() for img, cmap in zip(images, curves) for cid in np.unique(cmap[cmap > 0])
    ]
    assert np.mean(lit_fraction) < 0.85 and np.mean(np.asarray(lit_fraction) == 1.0) < 0.1
    assert R == curves.shape[1]


@pytest.mark.parametrize("resolution, n", [(16, 40), (32, 60), (64, 12)])
def test_labels_by_flood_fill(resolution, n):
    data = pathfinder.generate_pathfinder(
        n,
        np.random.default_rng(resolution),
        resolution=resolution,
        num_distractors=1 if resolution == 16 else 3,
        return_masks=True,
    )
    assert data["images"].shape == (n, resolution, resolution) and data["images"].dtype == np.uint8
    assert data["labels"].dtype == np.int64 and abs(int(data["labels"].sum()) * 2 - n) <= 1
    check_labels(data, pathfinder._marker_radius(resolution))


def test_path_x_resolution_shapes():
    data = pathfinder.generate_pathfinder(4, np.random.default_rng(0), resolution=128, return_masks=True)
    assert data["images"].shape == (4, 128, 128)
    check_labels(data, pathfinder._marker_radius(128))


def test_negative_marker_distance_is_no_shortcut():
    data = pathfinder.generate_pathfinder(1000, np.random.default_rng(5), return_masks=True)
    m = data["markers"].astype(float)
    dist = np.hypot(*(m[:, 0] - m[:, 1]).T)
    pos, neg = dist[data["labels"] == 1], dist[data["labels"] == 0]
    assert abs(np.median(pos) - np.median(neg)) < 2.5


def test_task_splits_balance_and_shapes(tmp_path):
    task = get_task("pathfinder", cache_dir=str(tmp_path))
    assert task.input_dim == 1 and task.output_dim == 2
    splits = task.make(0, (40, 20, 21))
    for ds in splits.values():
        assert all(x.shape == (1024, 1) and x.dtype == np.float32 for x in ds.inputs)
        assert set(np.unique(np.stack(ds.inputs))) <= {0.0, 1.0}
        counts = np.bincount(ds.targets, minlength=2)
        assert abs(int(counts[0]) - int(counts[1])) <= 1
    assert get_task("pathfinder", resolution=128).model_defaults["C_init"] == "complex_normal"


def test_cache_roundtrip_and_keys(tmp_path):
    task = get_task("pathfinder", resolution=16, num_distractors=1, cache_dir=str(tmp_path))
    first = task.make(3, (6, 4, 4))
    entries = sorted((tmp_path / "pathfinder").glob("*.npz"))
    assert len(entries) == 1
    with np.load(entries[0], allow_pickle=False) as archive:
        assert archive["train_images"].dtype == np.uint8 and archive["train_images"].shape == (6, 256)
    again = task.make(3, (6, 4, 4))
    for split in first:
        assert all(np.array_equal(a, b) for a, b in zip(first[split].inputs, again[split].inputs))
        assert np.array_equal(first[split].targets, again[split].targets)
    task.make(4, (6, 4, 4))  # another seed, another entry
    task.make(3, (6, 4, 4), curvature=0.1)  # another parameter, another entry
    assert len(list((tmp_path / "pathfinder").glob("*.npz"))) == 3
    # a corrupt entry is regenerated, with a warning
    entries[0].write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        fixed = task.make(3, (6, 4, 4))
    assert np.array_equal(fixed["train"].targets, first["train"].targets)


def test_errors():
    with pytest.raises(ValueError, match="resolution"):
        pathfinder.generate_pathfinder(2, np.random.default_rng(0), resolution=8)
    with pytest.raises(ValueError, match="could not place"):
        pathfinder.generate_pathfinder(
            2, np.random.default_rng(0), resolution=16, num_distractors=30, distractor_length=30.0
        )
