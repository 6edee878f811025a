"""Initialisation: HiPPO-LegS, its normal part, HiPPO-N eigenpairs, conj_sym, blocks, random draws."""

import math

import numpy as np
import pytest
import torch

from s5ssm import S5SSM
from s5ssm import init
from conftest import complex_param, naive_ssm

TRUNC_STD = 0.87962566103423978  # std of N(0, 1) truncated to [-2, 2]


@pytest.mark.parametrize("N", [1, 2, 5, 8])
def test_hippo_legs_entries(N):
    A = init.hippo_legs(N)
    for n in range(N):
        for k in range(N):
            if n > k:
                want = -math.sqrt(2 * n + 1) * math.sqrt(2 * k + 1)
            elif n == k:
                want = -(n + 1)
            else:
                want = 0.0
            assert A[n, k] == pytest.approx(want, rel=1e-14, abs=0)


@pytest.mark.parametrize("N", [2, 6, 16])
def test_normal_part(N):
    A = init.hippo_legs(N)
    p = np.sqrt(np.arange(N) + 0.5)
    S = init.hippo_normal(N)
    np.testing.assert_allclose(S, A + np.outer(p, p), rtol=0, atol=1e-12)
    # S = -I/2 + skew: S + Sᵀ = -I, and S is normal.
    np.testing.assert_allclose(S + S.T, -np.eye(N), atol=1e-12)
    np.testing.assert_allclose(S @ S.T, S.T @ S, atol=1e-9)


@pytest.mark.parametrize("N", [2, 4, 8, 16])
def test_hippo_n_eigendecomposition(N):
    Lam, V = init.hippo_n(N)
    S = init.hippo_normal(N)
    np.testing.assert_allclose(V @ np.diag(Lam) @ V.conj().T, S, atol=1e-10)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(N), atol=1e-12)
    np.testing.assert_allclose(Lam.real, -0.5, atol=1e-14)
    np.testing.assert_allclose(S @ V, V * Lam, atol=1e-10)  # columns are eigenvectors


@pytest.mark.parametrize("N", [2, 4, 8, 16])
def test_conj_sym_keeps_half_and_conjugates_complete_spectrum(N):
    Lam_full, _ = init.hippo_n(N)
    Lam, V, Vinv = init.block_diagonal_init(N, 1, conj_sym=True)
    assert Lam.shape == (N // 2,) and V.shape == (N, N // 2) and Vinv.shape == (N // 2, N)
    both = np.concatenate([Lam, Lam.conj()])
    key = lambda z: np.sort_complex(np.round(z, 10))  # noqa: E731
    np.testing.assert_allclose(key(both), key(Lam_full), atol=1e-10)
    # The kept eigenpairs plus their conjugates rebuild the (real) matrix S exactly.
    S = init.hippo_normal(N)
    half = V @ np.diag(Lam) @ Vinv
    np.testing.assert_allclose(half + half.conj(), S, atol=1e-10)
    V_full = np.concatenate([V, V.conj()], axis=1)
    np.testing.assert_allclose(V_full.conj().T @ V_full, np.eye(N), atol=1e-12)
    np.testing.assert_allclose(Vinv, V.conj().T, atol=0)


@pytest.mark.parametrize("conj_sym", [False, True])
def test_block_structure(conj_sym):
    J, N = 3, 4
    Lam, V, Vinv = init.block_diagonal_init(J * N, J, conj_sym)
    keep = N // 2 if conj_sym else N
    Lam1, V1, _ = init.block_diagonal_init(N, 1, conj_sym)
    np.testing.assert_array_equal(Lam, np.tile(Lam1, J))
    assert V.shape == (J * N, J * keep)
    for i in range(J):
        for j in range(J):
            blk = V[i * N : (i + 1) * N, j * keep : (j + 1) * keep]
            np.testing.assert_array_equal(blk, V1 if i == j else 0)
    np.testing.assert_array_equal(Vinv, V.conj().T)
    layer = S5SSM(2, J * N, J, conj_sym=conj_sym)
    assert layer.num_states == J * keep
    np.testing.assert_allclose(layer.Lambda_re.detach().numpy(), np.tile(Lam1.real, J), atol=1e-6)
    np.testing.assert_allclose(layer.Lambda_im.detach().numpy(), np.tile(Lam1.imag, J), rtol=1e-6)


def _full_spectrum_copy(half: S5SSM) -> S5SSM:
    """The conj_sym=False layer with Λ_full = [Λ, Λ*], B~_full = [B~; B~*], C~_full = [C~, C~*]."""
    full = S5SSM(half.hidden_size, half.state_size, half.blocks, conj_sym=False,
                 bidirectional=half.bidirectional, discretization=half.discretization,
                 scan_backend="reference").double()  # fmt: skip
    conj = lambda t: t * torch.tensor([1.0, -1.0], dtype=t.dtype)  # noqa: E731
    with torch.no_grad():
        full.Lambda_re.copy_(torch.cat([half.Lambda_re, half.Lambda_re]))
        full.Lambda_im.copy_(torch.cat([half.Lambda_im, -half.Lambda_im]))
        full.B.copy_(torch.cat([half.B, conj(half.B)], dim=0))
        names = ["C1", "C2"] if half.bidirectional else ["C"]
        for name in names:
            C = getattr(half, name)
            getattr(full, name).copy_(torch.cat([C, conj(C)], dim=1))
        full.D.copy_(half.D)
        full.log_step.copy_(torch.cat([half.log_step, half.log_step]))
    return full


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize("blocks", [1, 2])
def test_conj_sym_equals_full_spectrum_system(bidirectional, discretization, blocks):
    torch.manual_seed(0)
    half = S5SSM(3, 8, blocks, conj_sym=True, bidirectional=bidirectional,
                 discretization=discretization, scan_backend="reference").double()  # fmt: skip
    with torch.no_grad():  # move away from the init so the test is not about special values
        half.log_step.add_(torch.randn_like(half.log_step))
        half.Lambda_re.sub_(torch.rand_like(half.Lambda_re))
    full = _full_spectrum_copy(half)
    u = torch.randn(2, 11, 3, dtype=torch.float64)
    y_half, y_full = half(u), full(u)
    torch.testing.assert_close(y_half, y_full, rtol=1e-11, atol=1e-11)
    assert y_half.abs().max() > 1e-2


def test_full_spectrum_system_is_real():
    """At initialisation V_full B~_full is the real B and the full system's output is real."""
    torch.manual_seed(1)
    layer = S5SSM(4, 8, conj_sym=True).double()
    _, V, _ = init.block_diagonal_init(8, 1, True)
    V_full = torch.from_numpy(np.concatenate([V, V.conj()], axis=1))
    Bt = complex_param(layer.B)
    B = V_full @ torch.cat([Bt, Bt.conj()])
    assert B.imag.abs().max() < 1e-12


@pytest.mark.parametrize("conj_sym", [False, True])
def test_B_is_lecun_normal_with_fan_in_P_full(conj_sym):
    g = torch.Generator().manual_seed(0)
    P_full, H = 64, 256
    layer = S5SSM(H, P_full, conj_sym=conj_sym, generator=g).double()
    _, V, _ = init.block_diagonal_init(P_full, 1, conj_sym)
    V = torch.from_numpy(V)
    Bt = complex_param(layer.B)
    B = 2 * (V @ Bt).real if conj_sym else V @ Bt  # back to the real (P_full, H) draw
    if not conj_sym:
        assert B.imag.abs().max() < 1e-12
        B = B.real
    sigma = 1 / math.sqrt(P_full)
    assert B.std().item() == pytest.approx(sigma, rel=0.03)
    assert B.mean().abs().item() < 0.03 * sigma
    assert B.abs().max().item() <= 2 * sigma / TRUNC_STD + 1e-9  # truncated at 2 std of the base normal
    assert B.abs().max().item() > 0.95 * 2 * sigma / TRUNC_STD


@pytest.mark.parametrize("C_init,fan_in", [("trunc_standard_normal", "P"), ("lecun_normal", "HP")])
def test_C_statistics(C_init, fan_in):
    g = torch.Generator().manual_seed(1)
    P_full, H = 64, 128
    layer = S5SSM(H, P_full, conj_sym=False, C_init=C_init, generator=g).double()
    _, V, _ = init.block_diagonal_init(P_full, 1, False)
    C = complex_param(layer.C) @ torch.from_numpy(V).conj().T  # C~ V^H = C (V unitary)
    sigma = 1 / math.sqrt(P_full if fan_in == "P" else H * P_full)
    for part in (C.real, C.imag):
        assert part.std().item() == pytest.approx(sigma, rel=0.03)
        assert part.abs().max().item() <= 2 * sigma / TRUNC_STD * (1 + 1e-9)
    # with conj_sym the kept columns C V_k have E|C~|² = 2σ²
    layer = S5SSM(H, P_full, conj_sym=True, C_init=C_init, generator=g).double()
    m2 = complex_param(layer.C).abs().square().mean().item()
    assert m2 == pytest.approx(2 * sigma**2, rel=0.05)


def test_complex_normal_C_and_D():
    g = torch.Generator().manual_seed(2)
    layer = S5SSM(256, 128, conj_sym=True, C_init="complex_normal", generator=g).double()
    assert layer.C.shape == (256, 64, 2)
    assert layer.C.std().item() == pytest.approx(math.sqrt(0.5), rel=0.03)
    assert layer.C.mean().abs().item() < 0.02
    bi = S5SSM(8, 8, bidirectional=True, C_init="complex_normal")
    assert bi.C.shape == (8, 8, 2) and not hasattr(bi, "C1")
    bi2 = S5SSM(8, 8, bidirectional=True)
    assert bi2.C1.shape == bi2.C2.shape == (8, 4, 2) and not hasattr(bi2, "C")
    D = torch.cat([S5SSM(512, 4, generator=g).D.detach().double() for _ in range(4)])
    assert D.std().item() == pytest.approx(1.0, rel=0.05)
    assert D.mean().abs().item() < 0.1


@pytest.mark.parametrize("dt_min,dt_max", [(0.001, 0.1), (0.01, 0.011), (0.5, 0.5)])
def test_log_step_range(dt_min, dt_max):
    g = torch.Generator().manual_seed(3)
    lo, hi = math.log(dt_min), math.log(dt_max)
    layer = S5SSM(2, 32, 2, dt_min=dt_min, dt_max=dt_max, generator=g)
    assert layer.log_step.shape == (16,)
    assert layer.log_step.min() >= lo - 1e-6 and layer.log_step.max() <= hi + 1e-6  # float32
    ls = init.init_log_step(4096, dt_min, dt_max, generator=g)
    assert ls.dtype == torch.float64
    assert ls.min() >= lo - 1e-12 and ls.max() <= hi + 1e-12
    if dt_max > dt_min:  # uniform on [lo, hi]: mean and std of U
        width = hi - lo
        assert ls.mean().item() == pytest.approx((lo + hi) / 2, abs=0.03 * width)
        assert ls.std().item() == pytest.approx(width / math.sqrt(12), rel=0.05)
        assert ls.min() < lo + 0.01 * width and ls.max() > hi - 0.01 * width


def test_seeded_determinism():
    make = lambda seed: S5SSM(5, 8, 2, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = make(7), make(7), make(8)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
        if name not in ("Lambda_re", "Lambda_im"):
            assert not torch.equal(pa, pc), name
    torch.manual_seed(4)
    d = S5SSM(5, 8, 2)
    torch.manual_seed(4)
    e = S5SSM(5, 8, 2)
    for pd, pe in zip(d.parameters(), e.parameters()):
        assert torch.equal(pd, pe)


def test_init_output_matches_naive():
    """Sanity: a freshly initialised layer computes the paper's equations."""
    torch.manual_seed(5)
    layer = S5SSM(3, 8, 2, scan_backend="reference").double()
    u = torch.randn(2, 9, 3, dtype=torch.float64)
    torch.testing.assert_close(layer(u), naive_ssm(layer, u)[0], rtol=1e-10, atol=1e-10)


def test_parameter_dtype_follows_default_dtype():
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        layer = S5SSM(2, 4)
        assert all(p.dtype == torch.float64 for p in layer.parameters())
    finally:
        torch.set_default_dtype(old)
    assert all(p.dtype == torch.float32 for p in S5SSM(2, 4).parameters())
