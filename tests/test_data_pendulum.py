"""Pendulum: targets re-simulated independently; sampling, images and step_scale checked."""

from __future__ import annotations

import numpy as np
import pytest

from s5ssm.data import collate, get_task
from s5ssm.data.tasks import pendulum


def resimulate(theta0, kicks, n_steps, dt=0.01, friction=0.1, fine=200):
    """An independent integrator: semi-implicit (symplectic) Euler with dt/fine steps, as CRU
    does (at 1e-4 s there; 5e-5 s here), from the generator's initial angles and kicks."""
    theta = theta0.astype(np.float64).copy()
    omega = np.zeros_like(theta)
    h = dt / fine
    stiffness = 3 * 9.81  # g * l * m / I with I = m l^2 / 3, l = m = 1
    angles = [theta - np.pi]
    for k in range(n_steps - 1):
        for _ in range(fine):
            omega = omega + h * (stiffness * np.sin(theta) - friction * omega)
            theta = theta + h * omega
        omega = omega + kicks[:, k]
        theta = np.mod(theta, 2 * np.pi)
        angles.append(theta - np.pi)
    return np.stack(angles, axis=1)


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(11)
    return pendulum.generate_pendulum(24, rng, n_steps=60, return_latents=True)


def test_targets_are_sin_cos_of_the_simulated_angle(sample):
    phi = resimulate(sample["theta0"], sample["kicks"], n_steps=60)
    observed = sample["observed"]
    rows = np.arange(len(observed))[:, None]
    want = np.stack([np.sin(phi[rows, observed]), np.cos(phi[rows, observed])], axis=-1)
    # first-order Euler at 5e-5 s vs the generator's RK4: they agree to ~3e-4 over 0.6 s
    err = np.abs(sample["targets"] - want)
    assert np.median(err) < 1e-4 and err.max() < 2e-3, (np.median(err), err.max())
    assert np.allclose(np.hypot(sample["targets"][..., 0], sample["targets"][..., 1]), 1, atol=1e-6)


def test_sampling_times_and_clean_first_frames(sample):
    times, observed = sample["times"], sample["observed"]
    assert times.shape == (24, 30) and times.dtype == np.float64
    assert (np.diff(times, axis=1) > 0).all() and times.min() >= 0 and times.max() <= 59
    assert np.array_equal(times, observed.astype(float))
    assert len({tuple(t) for t in observed.tolist()}) > 20  # each sequence has its own times
    # the first 5 grid steps are noise free (CRU's burn-in): observed images equal the clean render
    clean = pendulum.render_pendulum(sample["phi"][np.arange(24)[:, None], observed])
    early = observed < 5
    assert early.any()
    np.testing.assert_allclose(sample["images"][early], clean[early], atol=1e-6)
    assert not np.allclose(sample["images"][~early], clean[~early])
    assert sample["images"].min() >= 0 and sample["images"].max() <= 1


def test_rendered_rod_points_along_the_angle():
    phi = np.linspace(-np.pi, np.pi, 16, endpoint=False)
    images = pendulum.render_pendulum(phi, 24).reshape(16, 24, 24)
    rows, cols = np.mgrid[0:24, 0:24] + 0.5
    for img, angle in zip(images, phi):
        w = img / img.sum()
        x, y = (w * cols).sum() - 12, (w * rows).sum() - 12  # centroid relative to the pivot
        # the rod's centroid lies along (sin phi, cos phi) with x right and y down
        assert np.hypot(x - 5.16 * np.sin(angle), y - 5.16 * np.cos(angle)) < 0.8, angle


def test_task_dataset_and_step_scale():
    task = get_task("pendulum")
    assert task.per_step and task.kind == "regression" and task.input_dim == 576 and task.output_dim == 2
    assert task.model_defaults["pooling"] == "none"
    splits = task.make(0, "tiny")
    ds = splits["train"]
    assert ds.targets.shape == (16, 20, 2) and ds.inputs[0].shape == (20, 576)
    batch = collate([ds[i] for i in range(4)])
    assert batch["y"].shape == (4, 20, 2)
    t = ds.timestamps[0]
    np.testing.assert_allclose(batch["step_scale"][0, 1:].numpy(), np.diff(t))
    assert batch["step_scale"][0, 0] == pytest.approx(np.median(np.diff(t)))


def test_no_noise_option_and_errors():
    data = pendulum.generate_pendulum(3, np.random.default_rng(0), n_steps=10, image_noise=False, return_latents=True)
    rows = np.arange(3)[:, None]
    np.testing.assert_allclose(data["images"], pendulum.render_pendulum(data["phi"][rows, data["observed"]]), atol=1e-6)
    with pytest.raises(ValueError, match="sample_rate"):
        pendulum.generate_pendulum(2, np.random.default_rng(0), n_steps=10, sample_rate=0.05)
    with pytest.raises(ValueError, match="n_steps"):
        pendulum.generate_pendulum(2, np.random.default_rng(0), n_steps=1)
