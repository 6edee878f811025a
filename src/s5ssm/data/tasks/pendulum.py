"""Irregularly sampled pendulum regression (Schirmer et al. 2022, CRU; used by S5, Sec. 6.3).

Recipe of CRU's ``generate_pendulums(task="regression")`` (itself from Becker et al.'s
RKN code), vectorised in numpy:

- Dynamics: a rod pendulum (mass 1, length 1, inertia m l^2 / 3) with friction 0.1,
  theta'' = (3 g / l) sin(theta) - friction * theta', theta = 0 upright. Start at
  theta ~ U[0, 2 pi), at rest. Every observation interval ``dt`` = 0.01 s the velocity
  gets a Gaussian kick N(0, 0.1^2) (transition noise) and theta is wrapped to
  [0, 2 pi). Between kicks we integrate with RK4 in ``substeps`` steps (CRU uses
  semi-implicit Euler at 1e-4 s; the difference is far below the image resolution).
  The reported angle is phi = theta - pi (phi = 0 hangs straight down).
- Images: ``image_size`` x ``image_size`` (24) grayscale, a line from the centre to the
  tip at (sin phi, cos phi) * 55/128 of the width (x right, y down), 8/128 of the width
  thick, anti-aliased by distance to the segment (CRU draws it at 128 px with PIL and
  downsamples). Then CRU's time-correlated noise: a per-sequence factor f_t (a clipped
  random walk with steps U[-0.2, 0.2], rescaled by random bounds t1 ~ U[0, 0.25],
  t2 ~ U[0.75, 1], f = 1 on the first 5 steps) mixes image and uniform noise:
  f * image + (1 - f) * U[0, 1).
- Irregular sampling: of the ``n_steps`` = 100 grid times, int(sample_rate * n_steps)
  = 50 distinct ones are kept per sequence, sorted (S5's sample_rate 0.5).

Per sequence: inputs float32 (50, 576) flattened images, timestamps float64 (50,) = the
kept grid indices (time in units of dt, so gaps are 1, 2, 3...: these drive
``step_scale``), targets float32 (50, 2) = (sin phi, cos phi) at EVERY observed step.
This is the paper's framing: per-step regression (``Task.per_step`` is True): the
model runs with pooling "none" and the MSE is averaged over the valid (mask) steps.

Sizes: default 2,000 / 1,000 / 1,000 (CRU's 2,000 train / 1,000 test, S5's extra 1,000
validation); tiny 16 / 8 / 8 with ``n_steps`` 40.
Options: n_steps (100), sample_rate (0.5), image_size (24, changes input_dim), dt (0.01),
friction (0.1), transition_noise (0.1), image_noise (True), substeps (10).
"""

from __future__ import annotations

import numpy as np

from ..dataset import SequenceDataset
from .base import Task, equal_length_inputs, model_defaults, split_rng

NAME = "pendulum"
DEFAULT_OPTIONS = {
    "n_steps": 100,
    "sample_rate": 0.5,
    "image_size": 24,
    "dt": 0.01,
    "friction": 0.1,
    "transition_noise": 0.1,
    "image_noise": True,
    "substeps": 10,
}
GRAVITY = 9.81
ROD_LENGTH = 1.0  # physical length; with inertia m l^2 / 3 the stiffness is 3 g / l
LINE_LENGTH = 55 / 128  # drawn rod length, fraction of the image width
LINE_WIDTH = 8 / 128  # drawn rod thickness, fraction of the image width
FIRST_CLEAN = 5


def _acceleration(theta: np.ndarray, omega: np.ndarray, friction: float) -> np.ndarray:
    return (3.0 * GRAVITY / ROD_LENGTH) * np.sin(theta) - friction * omega


def simulate_pendulum(
    n: int,
    n_steps: int,
    rng: np.random.Generator,
    *,
    dt: float = 0.01,
    friction: float = 0.1,
    transition_noise: float = 0.1,
    substeps: int = 10,
) -> dict[str, np.ndarray]:
    """Simulate n pendulums on a grid of n_steps times (spacing dt).

    Returns:
        "phi": float64 (n, n_steps), the angle theta - pi at each grid time;
        "theta0": float64 (n,), the initial theta in [0, 2 pi) (at rest);
        "kicks": float64 (n, n_steps - 1), the velocity noise added after each interval.
    """
    theta = rng.uniform(0.0, 2 * np.pi, size=n)
    omega = np.zeros(n)
    kicks = (
        rng.normal(0.0, transition_noise, size=(n, max(n_steps - 1, 0)))
        if transition_noise > 0
        else np.zeros((n, max(n_steps - 1, 0)))
    )
    theta0 = theta.copy()
    phi = np.empty((n, n_steps))
    phi[:, 0] = theta - np.pi
    h = dt / substeps
    for k in range(1, n_steps):
        for _ in range(substeps):  # classic RK4 on (theta, omega)
            a1 = _acceleration(theta, omega, friction)
            t2, w2 = theta + 0.5 * h * omega, omega + 0.5 * h * a1
            a2 = _acceleration(t2, w2, friction)
            t3, w3 = theta + 0.5 * h * w2, omega + 0.5 * h * a2
            a3 = _acceleration(t3, w3, friction)
            t4, w4 = theta + h * w3, omega + h * a3
            a4 = _acceleration(t4, w4, friction)
            theta = theta + (h / 6.0) * (omega + 2 * w2 + 2 * w3 + w4)
            omega = omega + (h / 6.0) * (a1 + 2 * a2 + 2 * a3 + a4)
        omega = omega + kicks[:, k - 1]
        theta = np.mod(theta, 2 * np.pi)
        phi[:, k] = theta - np.pi
    return {"phi": phi, "theta0": theta0, "kicks": kicks}


def render_pendulum(phi: np.ndarray, image_size: int = 24, chunk: int = 8192) -> np.ndarray:
    """Draw the rod at angles phi (any shape): float32 (*phi.shape, image_size**2) in [0, 1].

    Pixel (r, c) covers [c, c+1) x [r, r+1); its intensity is clip(w/2 + 0.5 - d, 0, 1)
    with d the distance from its centre to the segment centre -> tip and w the rod width.
    """
    phi = np.asarray(phi, dtype=np.float64)
    flat = phi.reshape(-1)
    size = int(image_size)
    centre = size / 2.0
    reach = LINE_LENGTH * size
    half_width = 0.5 * LINE_WIDTH * size
    coords = np.arange(size, dtype=np.float32) + 0.5
    px = np.tile(coords, size)[None, :]  # column (x) of each flattened pixel
    py = np.repeat(coords, size)[None, :]  # row (y)
    out = np.empty((flat.size, size * size), dtype=np.float32)
    for start in range(0, flat.size, chunk):
        p = flat[start : start + chunk]
        dx = (np.sin(p) * reach).astype(np.float32)[:, None]
        dy = (np.cos(p) * reach).astype(np.float32)[:, None]
        rx, ry = px - centre, py - centre
        s = np.clip((rx * dx + ry * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        dist = np.hypot(rx - s * dx, ry - s * dy)
        out[start : start + chunk] = np.clip(half_width + 0.5 - dist, 0.0, 1.0)
    return out.reshape(*phi.shape, size * size)


def noise_factors(n: int, n_steps: int, rng: np.random.Generator, r: float = 0.2) -> np.ndarray:
    """CRU's time-correlated image/noise mixing factors, float64 (n, n_steps) in [0, 1]."""
    f = np.empty((n, n_steps))
    f[:, 0] = rng.uniform(0.0, 1.0, size=n)
    steps = rng.uniform(-r, r, size=(n, max(n_steps - 1, 0)))
    for k in range(1, n_steps):
        f[:, k] = np.clip(f[:, k - 1] + steps[:, k - 1], 0.0, 1.0)
    t1 = rng.uniform(0.0, 0.25, size=(n, 1))
    t2 = rng.uniform(0.75, 1.0, size=(n, 1))
    f = np.clip((f - t1) / (t2 - t1), 0.0, 1.0)
    f[:, :FIRST_CLEAN] = 1.0
    return f


def generate_pendulum(
    n: int,
    rng: np.random.Generator,
    *,
    n_steps: int = 100,
    sample_rate: float = 0.5,
    image_size: int = 24,
    dt: float = 0.01,
    friction: float = 0.1,
    transition_noise: float = 0.1,
    image_noise: bool = True,
    substeps: int = 10,
    return_latents: bool = False,
) -> dict[str, np.ndarray]:
    """n irregularly sampled pendulum sequences.

    Returns:
        "images":  float32 (n, n_obs, image_size**2) in [0, 1], n_obs = int(sample_rate * n_steps);
        "times":   float64 (n, n_obs), the observed grid indices, increasing;
        "targets": float32 (n, n_obs, 2), (sin phi, cos phi) at the observed times;
        with return_latents also "phi" (n, n_steps), "theta0" (n,), "kicks" (n, n_steps-1),
        "observed" int64 (n, n_obs) and "factors" (n, n_steps).
    """
    if n_steps < 2:
        raise ValueError(f"n_steps must be >= 2, got {n_steps}")
    n_obs = int(sample_rate * n_steps)
    if not 1 <= n_obs <= n_steps:
        raise ValueError(
            f"sample_rate must keep between 1 and n_steps points, got sample_rate={sample_rate} (n_obs={n_obs})"
        )
    if image_size < 4:
        raise ValueError(f"image_size must be >= 4, got {image_size}")
    if substeps < 1 or dt <= 0:
        raise ValueError(f"need dt > 0 and substeps >= 1, got dt={dt}, substeps={substeps}")
    sim = simulate_pendulum(
        n, n_steps, rng, dt=dt, friction=friction, transition_noise=transition_noise, substeps=substeps
    )
    factors = noise_factors(n, n_steps, rng) if image_noise else np.ones((n, n_steps))
    observed = np.sort(np.argsort(rng.random((n, n_steps)), axis=1)[:, :n_obs], axis=1)
    rows = np.arange(n)[:, None]
    phi_obs = sim["phi"][rows, observed]
    images = render_pendulum(phi_obs, image_size)
    if image_noise:
        f = factors[rows, observed][..., None].astype(np.float32)
        noise = rng.random(images.shape, dtype=np.float32)
        images = f * images + (1.0 - f) * noise
    out = {
        "images": images,
        "times": observed.astype(np.float64),
        "targets": np.stack([np.sin(phi_obs), np.cos(phi_obs)], axis=-1).astype(np.float32),
    }
    if return_latents:
        out.update(phi=sim["phi"], theta0=sim["theta0"], kicks=sim["kicks"], observed=observed, factors=factors)
    return out


def _generate(seed: int, counts: dict[str, int], **options) -> dict[str, SequenceDataset]:
    for key in ("n_steps", "image_size", "substeps"):
        value = options[key]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{key} must be an int, got {value!r}")
    out = {}
    for split, n in counts.items():
        data = generate_pendulum(n, split_rng(seed, split), **options)
        out[split] = SequenceDataset(
            equal_length_inputs(data["images"]), data["targets"], timestamps=list(data["times"])
        )
    return out


def build(**options) -> Task:
    opts = {**DEFAULT_OPTIONS, **options}
    return Task(
        name=NAME,
        description="CRU pendulum: per-step (sin, cos) of the angle from noisy irregularly sampled 24x24 images",
        kind="regression",
        metric="mse",
        input_dim=int(opts["image_size"]) ** 2,
        output_dim=2,
        per_step=True,
        generator=_generate,
        # lindermanlab/S5 bin/run_experiments/run_pendulum.sh (S5 decodes each step with an MLP),
        # with CRU's image encoder as S5 uses it (s5ssm.encoders; square images of image_size)
        model_defaults=model_defaults(
            encoder="conv",
            hidden_size=30,
            state_size=16,
            blocks=8,
            num_layers=4,
            pooling="none",
            norm="layer",
            prenorm=False,
            activation="half_glu2",
            dt_min=0.01,
        ),
        train_defaults=dict(epochs=100, batch_size=32, ssm_lr=0.003, lr_factor=4, weight_decay=0.0, warmup_epochs=1),
        options=opts,
        bound_options=dict(options),
        sizes={
            "default": {"splits": (2000, 1000, 1000)},
            "tiny": {"splits": (16, 8, 8), "options": {"n_steps": 40}},
        },
        structural_options=("image_size",),
    )
