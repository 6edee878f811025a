"""Pathfinder (Linsley et al. 2018) as in the Long Range Arena, and Path-X at 128 px.

Each grayscale ``resolution`` x ``resolution`` image holds dashed curves on a black
background and two square markers. Label 1: the markers sit at the two ends of ONE
curve (they are connected by a dashed path); label 0: they sit at one end of each of
two different curves. Every image, of either class, has the same ingredients: two
"contours" of ``contour_length`` and ``num_distractors`` shorter distractor curves, so
only following the path decides the label. The input is the image read row by row:
float32 (resolution**2, 1) pixel intensities in [0, 1] (L = 1024 at 32, 4096 at 64,
16384 at 128 = Path-X). Classes are balanced exactly in every split.

Generator (vectorised over images in numpy):
- A curve is a random walk of direction: points every 0.5 px along its arclength, the
  heading turning by N(0, sigma^2) per point, sigma = curvature * sqrt(0.5 / s) with
  s = resolution / 32 (so shapes are the same at every resolution), clipped at 3 sigma.
  The shape is then translated uniformly to a place where it fits inside the image
  (margin: the marker size + 1 px).
- Curves never touch: a curve's pixels must keep a Chebyshev distance > ``clearance``
  (1 px, scaled by s) from every curve placed before it, and from a square of radius
  marker + clearance around each contour end. A candidate that breaks this is redrawn
  (up to 50 times; an image that still fails is generated anew).
- Dashes: along the arclength, ``dash_length`` px on, ``gap_length`` px off, with a
  random phase per curve; a pixel is lit when an "on" point falls in it. Markers are
  filled squares of radius ``max(1, round(s / 2))`` around the marked ends. Lit pixels
  are 1.0, background 0.0.
- Negatives mark the pair of contour ends (one per contour) whose distance is closest
  to the distance between the two ends of the first contour, so the distance between
  the markers does not give the label away.
Because curves never touch, "connected" has an exact meaning that tests check: on the
map of curve pixels (``return_masks=True``), the two markers are 8-connected iff label 1.

Sizes: default 20,000 / 2,500 / 2,500 at 32 and 64 px, 10,000 / 1,000 / 1,000 at 128
(LRA uses 160k / 20k / 20k: pass size=(160000, 20000, 20000)); tiny 32 / 16 / 16 at
16 px. Generated splits are cached as uint8 .npz files under ``cache_dir`` (default
``~/.cache/s5ssm/pathfinder``, or $S5SSM_CACHE), keyed by every generator parameter,
the sizes and the seed; ``cache_dir=None`` disables the cache.

Options: resolution (32; 64; 128 for Path-X), num_distractors (3), contour_length,
distractor_length, dash_length, gap_length (px at 32, scaled by s; defaults 20, 8, 2.5,
1.5; dashes are not shrunk below 32 px), curvature (0.3), clearance (1), cache_dir
("default").
"""

from __future__ import annotations

import numpy as np

from ..dataset import SequenceDataset
from .base import Task, cached_arrays, default_cache_dir, equal_length_inputs, model_defaults, split_rng

NAME = "pathfinder"
GENERATOR_VERSION = 1
DEFAULT_OPTIONS = {
    "resolution": 32,
    "num_distractors": 3,
    "contour_length": 20.0,
    "distractor_length": 8.0,
    "dash_length": 2.5,
    "gap_length": 1.5,
    "curvature": 0.3,
    "clearance": 1,
    "cache_dir": "default",
}
STEP = 0.5  # px between the points of a curve (keeps consecutive pixels 8-connected)
MAX_ATTEMPTS = 50


def _marker_radius(resolution: int) -> int:
    return max(1, int(round(resolution / 64)))


def _sample_shapes(m: int, n_points: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """m curve shapes starting at the origin: float64 (m, n_points, 2) as (x, y)."""
    turns = np.clip(rng.normal(0.0, sigma, size=(m, n_points - 1)), -3 * sigma, 3 * sigma)
    heading = rng.uniform(0.0, 2 * np.pi, size=(m, 1)) + np.concatenate(
        [np.zeros((m, 1)), np.cumsum(turns[:, :-1], axis=1)], axis=1
    )
    steps = STEP * np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    return np.concatenate([np.zeros((m, 1, 2)), np.cumsum(steps, axis=1)], axis=1)


def _place(
    shapes: np.ndarray, resolution: int, margin: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Translate each shape uniformly to where it fits in [margin, R - margin]; (points, fits)."""
    lo, hi = shapes.min(axis=1), shapes.max(axis=1)  # (m, 2)
    room_lo = margin - lo
    room_hi = resolution - margin - hi
    fits = (room_hi > room_lo).all(axis=1)
    offset = room_lo + rng.random(lo.shape) * np.maximum(room_hi - room_lo, 0.0)
    return shapes + offset[:, None, :], fits


def _square_offsets(radius: int) -> tuple[np.ndarray, np.ndarray]:
    d = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    return dy.ravel(), dx.ravel()


def _square_pixels(rows: np.ndarray, cols: np.ndarray, radius: int, resolution: int) -> np.ndarray:
    """Flat pixel indices (m, K * (2 radius + 1)**2) of the squares around (rows, cols), each (m, K).

    Squares are clipped to the image (an edge pixel may repeat).
    """
    dy, dx = _square_offsets(radius)
    r = np.clip(rows[..., None] + dy, 0, resolution - 1)
    c = np.clip(cols[..., None] + dx, 0, resolution - 1)
    return (r * resolution + c).reshape(rows.shape[0], -1)


def _attempt(
    n: int,
    rng: np.random.Generator,
    resolution: int,
    curve_points: list[int],
    sigma: float,
    clearance: int,
    marker: int,
    dash: float,
    gap: float,
):
    """Try to place every curve in n images; returns arrays and a success mask (n,)."""
    R = resolution
    rows_n = np.arange(n)
    occupied = np.zeros((n, R * R), dtype=bool)
    blocked = np.zeros((n, R * R), dtype=bool)
    curve_map = np.zeros((n, R * R), dtype=np.int8)
    lit = np.zeros((n, R * R), dtype=bool)
    ends = np.zeros((n, 2, 2, 2), dtype=np.int64)  # contour, end, (row, col)
    alive = np.ones(n, dtype=bool)
    period = dash + gap
    for c, n_points in enumerate(curve_points):
        contour = c < 2
        margin = marker + 1.0 if contour else 1.0
        pending = rows_n[alive]
        for _ in range(MAX_ATTEMPTS):
            if pending.size == 0:
                break
            m = pending.size
            points, fits = _place(_sample_shapes(m, n_points, sigma, rng), R, margin, rng)
            cols = np.clip(np.floor(points[..., 0]).astype(np.int64), 0, R - 1)
            rows = np.clip(np.floor(points[..., 1]).astype(np.int64), 0, R - 1)
            pix = rows * R + cols  # (m, P)
            ok = fits & ~blocked[pending[:, None], pix].any(axis=1)
            if contour:
                end_rows, end_cols = rows[:, [0, -1]], cols[:, [0, -1]]
                zone = _square_pixels(end_rows, end_cols, marker + clearance, R)  # (m, 2*(2r+1)^2)
                ok &= ~occupied[pending[:, None], zone].any(axis=1)
            idx, pix_ok = pending[ok], pix[ok]
            if idx.size:
                occupied[idx[:, None], pix_ok] = True
                curve_map[idx[:, None], pix_ok] = c + 1
                r_ok, c_ok = rows[ok], cols[ok]
                halo = _square_pixels(r_ok, c_ok, clearance, R)
                blocked[idx[:, None], halo] = True
                phase = rng.uniform(0.0, period, size=(idx.size, 1))
                on = np.mod(np.arange(n_points) * STEP + phase, period) < dash
                lit_rows = np.broadcast_to(idx[:, None], pix_ok.shape)[on]
                lit[lit_rows, pix_ok[on]] = True
                if contour:
                    ends[idx, c, :, 0] = end_rows[ok]
                    ends[idx, c, :, 1] = end_cols[ok]
                    zone_ok = _square_pixels(end_rows[ok], end_cols[ok], marker + clearance, R)
                    blocked[idx[:, None], zone_ok] = True
            pending = pending[~ok]
        alive[pending] = False
    return lit, curve_map, ends, alive


def generate_pathfinder(
    n: int,
    rng: np.random.Generator,
    *,
    resolution: int = 32,
    num_distractors: int = 3,
    contour_length: float = 20.0,
    distractor_length: float = 8.0,
    dash_length: float = 2.5,
    gap_length: float = 1.5,
    curvature: float = 0.3,
    clearance: int = 1,
    return_masks: bool = False,
) -> dict[str, np.ndarray]:
    """n Pathfinder images with balanced labels.

    Lengths are in pixels at resolution 32 and scale with resolution / 32.

    Returns:
        "images": uint8 (n, resolution, resolution), 0 or 255;
        "labels": int64 (n,), 1 = the markers are connected;
        with return_masks also "curves": int8 (n, R, R), 0 background or c + 1 on the
        pixels of curve c (0 and 1 are the contours, 2.. the distractors), and
        "markers": int64 (n, 2, 2), the (row, col) of the two marked curve ends.
    Labels are a shuffled alternation of 0 and 1, so the classes differ by at most one.
    """
    R = int(resolution)
    if R < 16:
        raise ValueError(f"resolution must be >= 16, got {resolution}")
    if num_distractors < 0:
        raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
    if min(contour_length, distractor_length, dash_length) <= 0 or gap_length <= 0:
        raise ValueError("contour_length, distractor_length, dash_length and gap_length must be > 0")
    if clearance < 1:
        raise ValueError(f"clearance must be >= 1 (curves must not touch), got {clearance}")
    s = R / 32.0
    sigma = float(curvature) * np.sqrt(STEP / s)
    clear = max(1, int(round(clearance * s)))
    marker = _marker_radius(R)
    lengths = [contour_length, contour_length] + [distractor_length] * int(num_distractors)
    curve_points = [max(2, int(round(length * s / STEP)) + 1) for length in lengths]

    lit_parts, map_parts, end_parts = [], [], []
    have, rounds = 0, 0
    while have < n:  # every round places at least one image, or raises
        rounds += 1
        need = n - have
        batch = max(need + need // 4 + 8, 64) if rounds > 1 else need + need // 8 + 8
        batch = min(batch, max(256, (1 << 26) // (R * R)))  # bounded memory: ~4k images at 128 px
        dash_scale = max(s, 1.0)  # below 32 px dashes keep their 32-px size, or gaps vanish
        lit, curve_map, ends, alive = _attempt(
            batch, rng, R, curve_points, sigma, clear, marker, dash_length * dash_scale, gap_length * dash_scale
        )
        keep = np.flatnonzero(alive)[:need]
        if keep.size == 0:
            raise ValueError(
                f"pathfinder: could not place {len(lengths)} curves without contact in any of {batch} "
                f"{R}x{R} images; use fewer distractors or shorter curves"
            )
        lit_parts.append(lit[keep])
        map_parts.append(curve_map[keep])
        end_parts.append(ends[keep])
        have += keep.size
    lit = np.concatenate(lit_parts)
    curve_map = np.concatenate(map_parts)
    ends = np.concatenate(end_parts)

    labels = rng.permutation(np.arange(n) % 2).astype(np.int64)
    rows_n = np.arange(n)
    # Negatives mark one end of each contour, choosing the pair whose distance is closest
    # to the distance between the two ends of contour 0 (what a positive would show), so
    # the marker distance is no shortcut to the label.
    span = np.hypot(*(ends[:, 0, 0] - ends[:, 0, 1]).T.astype(np.float64))
    pair = ends[:, 0, :, None, :] - ends[:, 1, None, :, :]  # (n, 2, 2, 2)
    mismatch = np.abs(np.hypot(pair[..., 0], pair[..., 1]) - span[:, None, None]).reshape(n, 4)
    mismatch += rng.random((n, 4)) * 1e-6  # random tie-break
    best = np.argmin(mismatch, axis=1)
    first_end = np.where(labels == 1, rng.integers(0, 2, size=n), best // 2)
    markers = np.empty((n, 2, 2), dtype=np.int64)
    markers[:, 0] = ends[rows_n, 0, first_end]
    markers[:, 1] = np.where(labels[:, None] == 1, ends[rows_n, 0, 1 - first_end], ends[rows_n, 1, best % 2])
    squares = _square_pixels(markers[..., 0], markers[..., 1], marker, R)  # (n, 2*(2r+1)^2)
    lit[rows_n[:, None], squares] = True
    images = (lit.reshape(n, R, R).astype(np.uint8)) * np.uint8(255)
    out = {"images": images, "labels": labels}
    if return_masks:
        out["curves"] = curve_map.reshape(n, R, R)
        out["markers"] = markers
    return out


def _generate(seed: int, counts: dict[str, int], *, cache_dir, **options) -> dict[str, SequenceDataset]:
    for key in ("resolution", "num_distractors", "clearance"):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{key} must be an int, got {value!r}")
    if cache_dir == "default":
        cache_dir = default_cache_dir()

    def build() -> dict[str, np.ndarray]:
        arrays = {}
        for split, n in counts.items():
            data = generate_pathfinder(n, split_rng(seed, split), **options)
            arrays[f"{split}_images"] = data["images"].reshape(n, -1)
            arrays[f"{split}_labels"] = data["labels"]
        return arrays

    arrays = cached_arrays(NAME, dict(version=GENERATOR_VERSION, seed=seed, counts=counts, **options), build, cache_dir)
    out = {}
    for split in counts:
        pixels = arrays[f"{split}_images"].astype(np.float32)
        pixels *= np.float32(1 / 255)
        out[split] = SequenceDataset(
            equal_length_inputs(pixels[:, :, None]), arrays[f"{split}_labels"].astype(np.int64)
        )
    return out


def build(**options) -> Task:
    opts = {**DEFAULT_OPTIONS, **options}
    resolution = opts["resolution"]
    if resolution >= 128:  # lindermanlab/S5 bin/run_experiments/run_lra_pathx.sh
        model = model_defaults(
            hidden_size=128,
            state_size=256,
            blocks=16,
            num_layers=6,
            pooling="mean",
            bidirectional=True,
            C_init="complex_normal",
            dt_min=0.0001,
        )
        train = dict(epochs=75, batch_size=32, ssm_lr=0.0006, lr_factor=3, weight_decay=0.06, warmup_epochs=1)
        default_splits = (10000, 1000, 1000)
    else:  # run_lra_pathfinder.sh (dt_min lowered at 64 px for the longer sequences)
        model = model_defaults(
            hidden_size=192,
            state_size=256,
            blocks=8,
            num_layers=6,
            dropout=0.05,
            pooling="mean",
            bidirectional=True,
            dt_min=0.001 if resolution <= 32 else 0.0001,
        )
        train = dict(epochs=200, batch_size=64, ssm_lr=0.0009, lr_factor=5, weight_decay=0.03, warmup_epochs=1)
        default_splits = (20000, 2500, 2500)
    return Task(
        name=NAME,
        description="LRA Pathfinder / Path-X: are the two markers joined by one dashed curve? (pixels, 2 classes)",
        kind="classification",
        metric="accuracy",
        input_dim=1,
        output_dim=2,
        generator=_generate,
        model_defaults=model,
        train_defaults=train,
        options=opts,
        bound_options=dict(options),
        sizes={
            "default": {"splits": default_splits},
            "tiny": {"splits": (32, 16, 16), "options": {"resolution": 16, "num_distractors": 1, "cache_dir": None}},
        },
    )
