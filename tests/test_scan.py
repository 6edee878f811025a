"""linear_scan: parallel (and whatever "auto" picks) == reference, gradients, final state, dispatch."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import s5ssm.scan as scan_mod
from s5ssm import linear_scan
from s5ssm.scan import reference, resolve_backend

LENGTHS = [1, 2, 3, 4, 5, 7, 8, 13, 16, 33]
# complex64 against a complex128 ground truth: |Λ̄| < 1, O(1) inputs, lengths <= 33
F32_TOL = dict(rtol=2e-5, atol=2e-5)


def loop(lam, bu, x0=None, reverse=False, resets=None):
    """The recurrence in Python, one (b, p) at a time: independent of both backends."""
    B, L, P = bu.shape
    lam3 = lam.reshape(1, 1, P) if lam.dim() == 1 else lam
    out = torch.zeros_like(bu)
    for b in range(B):
        for p in range(P):
            x = 0j if x0 is None else complex(x0[b, p])
            for k in (range(L - 1, -1, -1) if reverse else range(L)):
                if resets is not None and bool(resets[b, k]):
                    x = 0j
                a = complex(lam3[b if lam3.shape[0] > 1 else 0, k if lam3.shape[1] > 1 else 0, p])
                x = a * x + complex(bu[b, k, p])
                out[b, k, p] = x
    return out


def make(B, L, P, lam_shape, dtype=torch.complex128, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    shape = {"P": (P,), "B1P": (B, 1, P), "1LP": (1, L, P), "BLP": (B, L, P)}[lam_shape]
    mag = torch.rand(shape, generator=g, dtype=real) * 0.9 + 0.05
    phase = torch.rand(shape, generator=g, dtype=real) * 6.28
    lam = torch.polar(mag, phase)
    bu = torch.complex(torch.randn(B, L, P, generator=g, dtype=real), torch.randn(B, L, P, generator=g, dtype=real))
    x0 = torch.complex(torch.randn(B, P, generator=g, dtype=real), torch.randn(B, P, generator=g, dtype=real))
    resets = torch.rand(B, L, generator=g) < 0.3
    return lam, bu, x0, resets


def test_reference_matches_python_loop():
    for lam_shape, reverse, use_x0, use_resets in itertools.product(
        ["P", "B1P", "1LP", "BLP"], [False, True], [False, True], [False, True]
    ):
        lam, bu, x0, resets = make(2, 5, 3, lam_shape)
        kw = dict(initial_state=x0 if use_x0 else None, reverse=reverse, resets=resets if use_resets else None)
        want = loop(lam, bu, kw["initial_state"], reverse, kw["resets"])
        torch.testing.assert_close(reference.scan(lam, bu, kw["initial_state"], reverse, kw["resets"]), want,
                                   rtol=1e-13, atol=1e-13)  # fmt: skip


@pytest.mark.parametrize("backend", ["parallel", "auto"])
@pytest.mark.parametrize("lam_shape", ["P", "B1P", "1LP", "BLP"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fast_equals_reference_float64(backend, lam_shape, reverse):
    B, P = 3, 4
    for L, use_x0, use_resets in itertools.product(LENGTHS, [False, True], [False, True]):
        lam, bu, x0, resets = make(B, L, P, lam_shape, seed=L)
        kw = dict(initial_state=x0 if use_x0 else None, reverse=reverse, resets=resets if use_resets else None)
        want = linear_scan(lam, bu, backend="reference", **kw)
        got = linear_scan(lam, bu, backend=backend, **kw)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=lambda m: f"{L=} {kw.keys()} {m}")


@pytest.mark.parametrize("backend", ["parallel", "auto"])
@pytest.mark.parametrize("lam_shape", ["P", "BLP"])
def test_fast_equals_reference_float32(backend, lam_shape):
    for L, reverse, use_x0, use_resets in itertools.product([1, 6, 33], [False, True], [False, True], [False, True]):
        lam, bu, x0, resets = make(2, L, 5, lam_shape, dtype=torch.complex64, seed=L)
        kw = dict(initial_state=x0 if use_x0 else None, reverse=reverse, resets=resets if use_resets else None)
        want = linear_scan(lam, bu, backend="reference", **kw)
        want64 = linear_scan(lam.to(torch.complex128), bu.to(torch.complex128), backend="reference",
                             **{**kw, "initial_state": None if kw["initial_state"] is None
                                else kw["initial_state"].to(torch.complex128)})  # fmt: skip
        got = linear_scan(lam, bu, backend=backend, **kw)
        assert got.dtype == torch.complex64
        torch.testing.assert_close(got, want, **F32_TOL)
        torch.testing.assert_close(got.to(torch.complex128), want64, **F32_TOL)


@pytest.mark.parametrize("backend", ["parallel", "reference", "auto"])
@pytest.mark.parametrize("lam_shape", ["P", "B1P", "BLP"])
def test_gradcheck(backend, lam_shape):
    for L, reverse in ((1, False), (5, False), (6, True)):
        lam, bu, x0, resets = make(2, L, 2, lam_shape, seed=L)
        resets[:, 0] = False
        if L > 3:
            resets[0, 3] = True
        args = [t.detach().requires_grad_() for t in (lam, bu, x0)]
        f = lambda lam, bu, x0: linear_scan(lam, bu, initial_state=x0, reverse=reverse,  # noqa: E731
                                            resets=resets, backend=backend)  # fmt: skip
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("backend", ["parallel", "reference", "auto"])
def test_return_final_state_and_chunking(backend):
    lam, bu, x0, resets = make(2, 9, 3, "BLP", seed=3)
    states, final = linear_scan(lam, bu, initial_state=x0, resets=resets, return_final_state=True, backend=backend)
    torch.testing.assert_close(final, states[:, -1], rtol=0, atol=0)
    states_r, final_r = linear_scan(lam, bu, reverse=True, return_final_state=True, backend=backend)
    torch.testing.assert_close(final_r, states_r[:, 0], rtol=0, atol=0)
    # chunked with carried state == whole
    for cut in (1, 4, 8):
        first, s = linear_scan(lam[:, :cut], bu[:, :cut], initial_state=x0, resets=resets[:, :cut],
                               return_final_state=True, backend=backend)  # fmt: skip
        second = linear_scan(lam[:, cut:], bu[:, cut:], initial_state=s, resets=resets[:, cut:], backend=backend)
        torch.testing.assert_close(torch.cat([first, second], 1), states, rtol=1e-12, atol=1e-12)
        # reverse chunks: the later chunk first
        late, s = linear_scan(lam[:, cut:], bu[:, cut:], reverse=True, return_final_state=True, backend=backend)
        early = linear_scan(lam[:, :cut], bu[:, :cut], reverse=True, initial_state=s, backend=backend)
        torch.testing.assert_close(torch.cat([early, late], 1), states_r, rtol=1e-12, atol=1e-12)


def test_resets_equal_separate_episodes():
    lam, bu, x0, _ = make(1, 10, 3, "BLP", seed=4)
    resets = torch.zeros(1, 10, dtype=torch.bool)
    resets[0, [4, 7]] = True
    for backend in ("parallel", "reference", "auto"):
        got = linear_scan(lam, bu, initial_state=x0, resets=resets, backend=backend)
        parts = [linear_scan(lam[:, :4], bu[:, :4], initial_state=x0, backend="reference"),
                 linear_scan(lam[:, 4:7], bu[:, 4:7], backend="reference"),
                 linear_scan(lam[:, 7:], bu[:, 7:], backend="reference")]  # fmt: skip
        torch.testing.assert_close(got, torch.cat(parts, 1), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- dispatcher
def test_resolve_backend(monkeypatch):
    monkeypatch.delenv("S5SSM_SCAN_BACKEND", raising=False)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    assert resolve_backend("auto", cpu) == "cpu"
    assert resolve_backend("auto", meta) == "parallel"
    for name in ("parallel", "reference"):
        assert resolve_backend(name, cpu) == name
        assert resolve_backend(name, meta) == name
    assert resolve_backend("cpu", cpu) == "cpu"
    with pytest.raises(ValueError, match="backend 'cpu' needs CPU tensors"):
        resolve_backend("cpu", meta)
    monkeypatch.setenv("S5SSM_SCAN_BACKEND", "reference")
    assert resolve_backend("auto", cpu) == "reference"
    assert resolve_backend("parallel", cpu) == "parallel"  # an explicit name wins over the env var
    monkeypatch.setenv("S5SSM_SCAN_BACKEND", "auto")
    assert resolve_backend("auto", meta) == "parallel"
    monkeypatch.setenv("S5SSM_SCAN_BACKEND", "fastest")
    with pytest.raises(ValueError, match=r"backend must be one of .*'fastest'"):
        resolve_backend("auto", cpu)


def test_bad_backend_name():
    lam, bu, _, _ = make(1, 3, 2, "P")
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', .*'triton'\), got 'gpu'"):
        linear_scan(lam, bu, backend="gpu")


@pytest.mark.parametrize("env,expected", [("reference", "reference"), ("parallel", "parallel")])
def test_env_var_selects_backend(monkeypatch, env, expected):
    calls = []
    for name in ("reference", "parallel"):
        mod = getattr(scan_mod, name)
        real = mod.scan
        monkeypatch.setattr(mod, "scan", lambda *a, _real=real, _n=name: calls.append(_n) or _real(*a))
    monkeypatch.setenv("S5SSM_SCAN_BACKEND", env)
    lam, bu, _, _ = make(1, 3, 2, "P")
    linear_scan(lam, bu)
    assert calls == [expected]
    calls.clear()
    linear_scan(lam, bu, backend="reference" if expected == "parallel" else "parallel")
    assert calls == ["reference" if expected == "parallel" else "parallel"]


# ---------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 3),
    L=st.integers(1, 40),
    P=st.integers(1, 5),
    lam_shape=st.sampled_from(["P", "B1P", "1LP", "BLP"]),
    reverse=st.booleans(),
    use_x0=st.booleans(),
    use_resets=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_parallel_equals_reference(B, L, P, lam_shape, reverse, use_x0, use_resets, seed):
    lam, bu, x0, resets = make(B, L, P, lam_shape, seed=seed)
    kw = dict(initial_state=x0 if use_x0 else None, reverse=reverse, resets=resets if use_resets else None)
    want = linear_scan(lam, bu, backend="reference", **kw)
    for backend in ("parallel", "auto"):
        torch.testing.assert_close(linear_scan(lam, bu, backend=backend, **kw), want, rtol=1e-12, atol=1e-12)
