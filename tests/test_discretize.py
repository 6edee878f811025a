"""Discretisation: ZOH and bilinear vs closed forms and the matrix exponential, step_scale shapes,
Δ = 0, small-Δ accuracy, and no L×P×H intermediate in the layer."""

import cmath

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from s5ssm import S5SSM
from s5ssm.discretize import bilinear, discretize, step_sizes, zoh


def random_system(P=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    Lam = torch.complex(-torch.rand(P, generator=g, dtype=torch.float64) * 2 - 0.01,
                        torch.randn(P, generator=g, dtype=torch.float64) * 5)  # fmt: skip
    delta = torch.exp(torch.empty(P, dtype=torch.float64).uniform_(-7, 0, generator=g))
    return Lam, delta


def test_zoh_closed_form():
    Lam, delta = random_system()
    lam_bar, gamma = zoh(Lam, delta)
    for p in range(len(Lam)):
        l, d = complex(Lam[p]), float(delta[p])
        want = cmath.exp(l * d)
        assert abs(complex(lam_bar[p]) - want) <= 1e-14 * abs(want) + 1e-15
        want_g = (cmath.exp(l * d) - 1) / l
        assert abs(complex(gamma[p]) - want_g) <= 1e-12 * abs(want_g)


def test_bilinear_closed_form():
    Lam, delta = random_system(seed=1)
    lam_bar, gamma = bilinear(Lam, delta)
    for p in range(len(Lam)):
        l, d = complex(Lam[p]), float(delta[p])
        assert abs(complex(lam_bar[p]) - (1 + d * l / 2) / (1 - d * l / 2)) < 1e-14
        assert abs(complex(gamma[p]) - d / (1 - d * l / 2)) < 1e-14 * d + 1e-300


def test_zoh_equals_matrix_exponential_definition():
    """[[A, B], [0, 0]]·Δ exponentiated is [[Ā, B̄], [0, I]] (A = diag Λ, same Δ for all states)."""
    P, H = 4, 3
    Lam, _ = random_system(P, seed=2)
    Bt = torch.randn(P, H, dtype=torch.complex128)
    for delta in (1e-3, 0.07, 0.9):
        M = torch.zeros(P + H, P + H, dtype=torch.complex128)
        M[:P, :P] = torch.diag(Lam)
        M[:P, P:] = Bt
        E = torch.linalg.matrix_exp(M * delta)
        lam_bar, gamma = zoh(Lam, torch.full((P,), delta, dtype=torch.float64))
        torch.testing.assert_close(E[:P, :P], torch.diag(lam_bar), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(E[:P, P:], gamma[:, None] * Bt, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_zero_step_passes_state_through(method):
    Lam, _ = random_system(seed=3)
    lam_bar, gamma = discretize(Lam, torch.zeros(7, dtype=torch.float64), method, step_scale=0.0)
    assert torch.equal(lam_bar, torch.ones_like(lam_bar))
    assert torch.equal(gamma, torch.zeros_like(gamma))
    scale = torch.tensor([[1.0, 0.0, 2.0]], dtype=torch.float64)
    lam_bar, gamma = discretize(Lam, torch.zeros(7, dtype=torch.float64), method, step_scale=scale)
    assert torch.equal(lam_bar[:, 1], torch.ones_like(lam_bar[:, 1]))
    assert torch.equal(gamma[:, 1], torch.zeros_like(gamma[:, 1]))
    assert not torch.any(torch.isnan(torch.view_as_real(gamma)))


def gamma_series(lam: complex, delta: float) -> complex:
    """(exp(ΛΔ) - 1)/Λ = Δ Σ_k (ΛΔ)^k/(k+1)!: no cancellation for |ΛΔ| < 1."""
    z, term, total = lam * delta, 1.0 + 0j, 0j
    for k in range(40):
        total += term
        term *= z / (k + 2)
    return delta * total


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 2e-15), (torch.float32, 2e-6)])
def test_small_step_gamma_has_no_cancellation(dtype, rtol):
    lams = [-0.5 + 0.0j, -0.5 + 3.0j, -1e-4 + 100.0j, -2.0 - 0.3j, -0.5 + 1e-6j]
    deltas = [1e-12, 1e-9, 1e-6, 1e-4, 1e-2]
    ctype = torch.complex128 if dtype == torch.float64 else torch.complex64
    Lam = torch.tensor(lams, dtype=ctype)
    for d in deltas:
        _, gamma = zoh(Lam, torch.full((len(lams),), d, dtype=dtype))
        for p, lam in enumerate(lams):
            lam_c = complex(Lam[p])  # the eigenvalue as stored in this precision
            want = gamma_series(lam_c, float(torch.tensor(d, dtype=dtype)))
            got = complex(gamma[p])
            assert abs(got - want) <= rtol * 4 * abs(want), (lam, d, got, want)


def test_step_scale_shapes():
    P, B, L = 5, 3, 4
    log_step = torch.randn(P, dtype=torch.float64)
    step = log_step.exp()
    assert step_sizes(log_step, None).shape == (P,)
    torch.testing.assert_close(step_sizes(log_step, 2.5), 2.5 * step)
    per_seq = torch.rand(B, dtype=torch.float64) + 0.1
    d = step_sizes(log_step, per_seq)
    assert d.shape == (B, 1, P)
    torch.testing.assert_close(d[:, 0], per_seq[:, None] * step)
    per_step = torch.rand(B, L, dtype=torch.float64) + 0.1
    d = step_sizes(log_step, per_step)
    assert d.shape == (B, L, P)
    torch.testing.assert_close(d, per_step[..., None] * step)
    Lam = torch.complex(-torch.rand(P, dtype=torch.float64), torch.randn(P, dtype=torch.float64))
    for method in ("zoh", "bilinear"):
        for scale, shape in ((None, (P,)), (1.5, (P,)), (per_seq, (B, 1, P)), (per_step, (B, L, P))):
            lam_bar, gamma = discretize(Lam, log_step, method, scale)
            assert lam_bar.shape == gamma.shape == shape
    # per-step values are the scalar rule applied step by step
    lam_bar, gamma = discretize(Lam, log_step, "zoh", per_step)
    for b in range(B):
        for k in range(L):
            lb, g = discretize(Lam, log_step, "zoh", float(per_step[b, k]))
            torch.testing.assert_close(lam_bar[b, k], lb, rtol=1e-13, atol=0)
            torch.testing.assert_close(gamma[b, k], g, rtol=1e-13, atol=0)


@pytest.mark.parametrize("method", ["zoh", "bilinear"])
def test_layer_step_scale_matches_naive(method):
    """The layer with float / [B] / [B, L] step_scale against the paper's equations."""
    from conftest import naive_ssm

    torch.manual_seed(0)
    layer = S5SSM(3, 8, discretization=method, step_rescale=1.3, scan_backend="parallel").double()
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    for scale in (None, 0.7, torch.tensor([0.5, 3.0], dtype=torch.float64),
                  torch.rand(2, 6, dtype=torch.float64) * 4 + 0.05):  # fmt: skip
        torch.testing.assert_close(layer(u, step_scale=scale), naive_ssm(layer, u, scale)[0],
                                   rtol=1e-10, atol=1e-10)  # fmt: skip


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.numels.append((t.numel(), tuple(t.shape), str(func)))
        return out


@pytest.mark.parametrize("backend", ["parallel", "reference"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_no_L_P_H_intermediate_with_per_step_scale(backend, bidirectional):
    B, L, H, P = 1, 37, 5, 6
    layer = S5SSM(H, 2 * P, bidirectional=bidirectional, scan_backend=backend).double()
    u = torch.randn(B, L, H, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(B, L, dtype=torch.float64) + 0.5
    rec = ShapeRecorder()
    with rec:
        y = layer(u, step_scale=scale)
        y.sum().backward()
    assert rec.numels, "the recorder saw nothing"
    biggest = max(rec.numels)
    assert biggest[0] < L * P * H // 2, biggest
