"""The fused irregular-step scan (scan/irregular.py) against discretize + the reference scan.

Tolerances: float64 (complex128) results equal the unfused path to 1e-12 (values) and
1e-10 (gradients) relative; complex64 results equal the complex128 ones to 1e-5 (values)
and 1e-4 (gradients) of the largest entry.
"""

import itertools

import numba
import numpy as np
import pytest
import torch

from s5ssm import S5SSM
from s5ssm.discretize import bilinear, zoh
from s5ssm.scan import core, discretize_kernel, irregular, linear_scan
from s5ssm.scan.irregular import irregular_scan

B, L, P = 3, 7, 5
RULES = {"zoh": zoh, "bilinear": bilinear}


def inputs(dtype=torch.complex128, seed=0, B=B, L=L, P=P):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    lam = torch.complex(-torch.rand(P, generator=g, dtype=real) - 0.1, 2 * torch.randn(P, generator=g, dtype=real))
    delta = 0.5 * torch.rand(P, generator=g, dtype=real) + 0.01
    scale = 2 * torch.rand(B, L, generator=g, dtype=real)
    scale[0, 2] = 0.0  # a zero step (a masked step): the state passes through
    v = torch.randn(B, L, P, generator=g, dtype=dtype)
    x0 = torch.randn(B, P, generator=g, dtype=dtype)
    resets = torch.rand(B, L, generator=g) < 0.2
    return lam, delta, scale, v, x0, resets


def unfused(method, lam, delta, scale, v, x0, resets, reverse):
    lam_bar, gamma = RULES[method](lam, scale[..., None] * delta)
    return linear_scan(lam_bar, gamma * v, initial_state=x0, resets=resets, reverse=reverse, backend="reference")


def max_relative_error(got, want):
    return float((got - want).detach().abs().max() / want.detach().abs().max())


# ---------------------------------------------------------------------------- exp and sin/cos
@numba.njit
def _evaluate(x, out):  # pragma: no cover - compiled
    c = discretize_kernel.precision(x)
    for i in range(x.shape[0]):
        out[0, i], out[1, i] = discretize_kernel.exp_expm1(x[i], c)
        out[2, i], out[3, i] = discretize_kernel.sincos(x[i], c)


def evaluate(x):
    out = np.empty((4, x.size), dtype=x.dtype)
    _evaluate(x, out)
    return out


@pytest.mark.parametrize("dtype,exp_max", [(np.float64, 700.0), (np.float32, 85.0)])
def test_polynomial_exp_expm1_sincos_within_two_ulp_of_libm(dtype, exp_max):
    x = np.concatenate([np.linspace(-60, 60, 40001), np.linspace(-1e-3, 1e-3, 2001), np.geomspace(1e-30, 1e-3, 200),
                        np.linspace(-exp_max, exp_max, 4001)]).astype(dtype)  # fmt: skip
    got = evaluate(x)
    exact = x.astype(np.float64)
    for name, row, want in zip(["exp", "expm1", "sin", "cos"], got, [np.exp, np.expm1, np.sin, np.cos]):
        want = want(exact)
        ulp = np.spacing(np.abs(want).astype(dtype)).astype(np.float64)
        bound = 2 * ulp if name.startswith("exp") else 2 * np.finfo(dtype).eps  # sin/cos: absolute
        worst = np.max(np.abs(row - want) / bound)
        assert worst <= 1, f"{dtype.__name__} {name}: {worst * 2:.2f} times the bound"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_polynomial_special_values(dtype):
    x = np.array([0.0, -1e4, 1e4, np.nan, -np.inf, np.inf], dtype=dtype)
    e, em1, sin, cos = evaluate(x)
    assert (e[0], em1[0], sin[0], cos[0]) == (1, 0, 0, 1)  # a zero step is exact: Λ̄ = 1, γ = 0
    assert (e[1], em1[1]) == (0, -1) and (e[2], em1[2]) == (np.inf, np.inf)
    assert np.isnan(e[3]) and np.isnan(em1[3]) and np.isnan(sin[3]) and np.isnan(cos[3])
    assert (e[4], em1[4], e[5]) == (0, -1, np.inf)
    assert np.isnan(sin[4:]).all() and np.isnan(cos[4:]).all()
    big = np.array([1e5, 1e7], dtype=dtype)  # beyond exact Cody-Waite: within the error of y's own rounding
    _, _, sin, cos = evaluate(big)
    bound = big.astype(np.float64) * np.finfo(dtype).eps
    assert (np.abs(sin - np.sin(big.astype(np.float64))) <= bound).all()
    assert (np.abs(cos - np.cos(big.astype(np.float64))) <= bound).all()
    _, _, sin, cos = evaluate(np.array([1e9, -3e18, 1e30], dtype=dtype))  # meaningless, but on the unit circle
    np.testing.assert_allclose(sin.astype(np.float64) ** 2 + cos.astype(np.float64) ** 2, 1, rtol=1e-6)


# ---------------------------------------------------------------------------- the fused function
@pytest.mark.parametrize("method,reverse,with_resets,with_state", list(itertools.product(RULES, [False, True], [False, True], [False, True])))  # fmt: skip
@pytest.mark.parametrize("length", [L, irregular._BLOCK + 11])  # across the blocks of time steps of the backward and a reverse forward
def test_values_and_gradients_equal_the_unfused_path(method, reverse, with_resets, with_state, length):
    lam, delta, scale, v, x0, resets = inputs(L=length)
    resets = resets if with_resets else None
    args = [t.requires_grad_() for t in (lam, delta, scale, v, x0)]
    if not with_state:
        args[-1] = None
    expected = unfused(method, *args, resets, reverse)
    got = irregular_scan(*args[:4], method, initial_state=args[4], resets=resets, reverse=reverse)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    grads_in = [a for a in args if a is not None]
    out_grad = torch.randn_like(expected)
    want = torch.autograd.grad(expected, grads_in, out_grad)
    for w, h in zip(want, torch.autograd.grad(got, grads_in, out_grad)):
        torch.testing.assert_close(h, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", RULES)
def test_blocks_of_states_split_across_tasks(monkeypatch, method):
    """A sequence's states split into uneven blocks (one task each), as with fewer sequences than threads."""
    monkeypatch.setattr(irregular, "_splits", lambda batch, size: 3)
    lam, delta, scale, v, x0, resets = inputs(B=2, P=8)  # blocks of 3, 3, 2 states
    args = [t.requires_grad_() for t in (lam, delta, scale, v, x0)]
    expected = unfused(method, *args, resets, False)
    got = irregular_scan(*args[:4], method, initial_state=args[4], resets=resets)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    out_grad = torch.randn_like(expected)
    for w, h in zip(torch.autograd.grad(expected, args, out_grad), torch.autograd.grad(got, args, out_grad)):
        torch.testing.assert_close(h, w, rtol=1e-10, atol=1e-12)


def test_lazily_conjugated_and_strided_inputs():
    """conj() views (torch's conjugate bit) and non-contiguous inputs are read as their values."""
    lam, delta, scale, v, x0, resets = inputs()
    args = [t.requires_grad_() for t in (lam, delta, scale, v, x0)]
    lam_c, v_c, x0_c = lam.conj(), v.transpose(0, 1).contiguous().transpose(0, 1).conj(), x0.conj()
    assert v_c.is_conj() and not v_c.is_contiguous()
    expected = unfused("zoh", lam_c, delta, scale.t().contiguous().t(), v_c, x0_c, resets, False)
    got = irregular_scan(lam_c, delta, scale.t().contiguous().t(), v_c, initial_state=x0_c, resets=resets)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    out_grad = torch.randn_like(expected)
    for w, h in zip(torch.autograd.grad(expected, args, out_grad), torch.autograd.grad(got, args, out_grad)):
        torch.testing.assert_close(h, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,reverse", [("zoh", False), ("bilinear", True)])
def test_gradcheck_float64(method, reverse):
    *tensors, resets = inputs(B=2, L=4, P=3)
    args = tuple(t.requires_grad_() for t in tensors)  # Λ, Δ, s, v, initial state

    def fused(lam, delta, scale, v, x0):
        return irregular_scan(lam, delta, scale, v, method, initial_state=x0, resets=resets, reverse=reverse)

    assert torch.autograd.gradcheck(fused, args)


@pytest.mark.parametrize("method", RULES)
def test_complex64_equals_complex128_within_float32_round_off(method):
    args64 = [t.requires_grad_() for t in inputs(torch.complex128, B=2, L=300, P=16)[:5]]
    _, _, _, _, _, resets = inputs(torch.complex128, B=2, L=300, P=16)
    args32 = [t.detach().to(torch.complex64 if t.is_complex() else torch.float32).requires_grad_() for t in args64]
    out_grad = torch.randn(2, 300, 16, dtype=torch.complex128)
    results = []
    for args in (args64, args32):
        states = irregular_scan(*args[:4], method, initial_state=args[4], resets=resets)
        results.append((states, *torch.autograd.grad(states, args, out_grad.to(states.dtype))))
    for name, want, got in zip(["states", "Lambda", "delta", "scale", "v", "initial_state"], *results):
        bound = 1e-5 if name == "states" else 1e-4
        assert max_relative_error(got.to(want.dtype), want) < bound, name


def test_torch_compile_fullgraph_forward_and_backward():
    lam, delta, scale, v, x0, resets = inputs()
    leaves = [t.requires_grad_() for t in (lam, delta, scale, v)]

    def loss(lam, delta, scale, v):
        return irregular_scan(lam, delta, scale, v, "zoh", initial_state=x0, resets=resets).abs().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for got, want in zip(torch.autograd.grad(compiled(*leaves), leaves), torch.autograd.grad(loss(*leaves), leaves)):
        torch.testing.assert_close(got, want)


def test_argument_errors():
    lam, delta, scale, v, x0, _ = inputs()
    with pytest.raises(ValueError, match="method must be one of"):
        irregular_scan(lam, delta, scale, v, "euler")
    with pytest.raises(TypeError, match="Lambda must have dtype complex128"):
        irregular_scan(lam.to(torch.complex64), delta, scale, v)
    with pytest.raises(ValueError, match=r"delta must have shape \[P=5\]"):
        irregular_scan(lam, delta[:4], scale, v)
    with pytest.raises(ValueError, match=r"scale must have shape \[B=3, L=7\]"):
        irregular_scan(lam, delta, scale[:, :3], v)
    with pytest.raises(TypeError, match="v must have dtype complex64 or complex128"):
        irregular_scan(lam, delta, scale, v.real)
    with pytest.raises(ValueError, match=r"initial_state must have shape \[B=3, P=5\]"):
        irregular_scan(lam, delta, scale, v, initial_state=x0[:2])
    with pytest.raises(TypeError, match="resets must have dtype bool"):
        irregular_scan(lam, delta, scale, v, resets=torch.zeros(B, L))


# ---------------------------------------------------------------------------- the layer
def layer_pair(seed, **options):
    torch.manual_seed(seed)
    fused = S5SSM(3, 8, 2, scan_backend="cpu", **options).double()
    with torch.no_grad():
        fused.log_step.add_(1.5)  # longer timescales: the state matters in short tests
        fused.Lambda_re[:2] = torch.tensor([0.05, -1e-6])  # clip_eigs clips these two
    reference = S5SSM(3, 8, 2, scan_backend="reference", **options).double()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


GRID = [
    (method, conj_sym, bidirectional, resets, state, mask, clip)
    for method, conj_sym, bidirectional, resets, state, mask, clip in itertools.product(
        ["zoh", "bilinear"], [True, False], [False, True], [False, True], [False, True], ["none", "right", "gaps"],
        [False, True],
    )
    if not (bidirectional and state)  # a bidirectional layer carries no state
]


@pytest.mark.parametrize("discretization,conj_sym,bidirectional,with_resets,with_state,mask_kind,clip_eigs", GRID)
def test_layer_fused_equals_reference_with_gradients(
    discretization, conj_sym, bidirectional, with_resets, with_state, mask_kind, clip_eigs
):
    fused, reference = layer_pair(len(GRID), discretization=discretization, conj_sym=conj_sym,
                                  bidirectional=bidirectional, clip_eigs=clip_eigs)  # fmt: skip
    g = torch.Generator().manual_seed(7)
    u = torch.randn(B, L, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (0.2 + 2 * torch.rand(B, L, generator=g, dtype=torch.float64)).requires_grad_()
    mask = None
    if mask_kind == "right":
        mask = torch.arange(L)[None] < torch.tensor([L, 4, 1])[:, None]
    elif mask_kind == "gaps":
        mask = torch.rand(B, L, generator=g) < 0.6
        mask[:, 0] = True
    kwargs = dict(step_scale=scale, mask=mask)
    if with_resets:
        kwargs["resets"] = torch.zeros(B, L, dtype=torch.bool)
        kwargs["resets"][1, 3] = kwargs["resets"][0, 5] = True
    if with_state:
        kwargs.update(state=torch.randn(B, fused.num_states, generator=g, dtype=torch.complex128), return_state=True)
    outs = [layer(u, **kwargs) for layer in (fused, reference)]
    flat = [o if isinstance(o, tuple) else (o,) for o in outs]
    for got, want in zip(*flat):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    grad_out = torch.randn_like(flat[1][0])
    params = [list(layer.parameters()) for layer in (fused, reference)]
    got = torch.autograd.grad(flat[0][0], [u, scale, *params[0]], grad_out)
    want = torch.autograd.grad(flat[1][0], [u, scale, *params[1]], grad_out)
    for name, h, w in zip(["u", "step_scale"] + [n for n, _ in fused.named_parameters()], got, want):
        torch.testing.assert_close(h, w, rtol=1e-9, atol=1e-11, msg=name)


def test_layer_takes_the_fused_path_only_for_per_step_scales_on_cpu(monkeypatch):
    fused_calls, discretized = [], []
    real_scan, real_discretize = irregular._forward_impl, core.discretize  # the kernel both fused paths call
    monkeypatch.setattr(irregular, "_forward_impl", lambda *a: fused_calls.append(a[2].shape) or real_scan(*a))
    record = lambda *a: discretized.append(getattr(a[3], "shape", a[3])) or real_discretize(*a)  # noqa: E731
    monkeypatch.setattr(core, "discretize", record)
    monkeypatch.delenv("S5SSM_SCAN_BACKEND", raising=False)
    layer = S5SSM(3, 8).double()
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    per_step = torch.rand(2, 6, dtype=torch.float64) + 0.1
    layer(u, step_scale=per_step)
    assert fused_calls == [(2, 6)] and discretized == []  # no (B, L, P) Λ̄, γ
    layer(u, step_scale=torch.rand(2, dtype=torch.float64) + 0.1)  # per sequence: Λ̄ (B, 1, P), unfused
    layer(u, step_scale=0.5)
    assert fused_calls == [(2, 6)] and discretized == [(2,), 0.5]
    S5SSM(3, 8, scan_backend="parallel").double()(u, step_scale=per_step)  # other backends: unfused
    assert fused_calls == [(2, 6)] and discretized[-1] == (2, 6)
    gaps = torch.tensor([[True, False, True, True, False, True]] * 2)
    layer(u, mask=gaps)  # masked gaps are zero-length steps: the fused path too
    assert fused_calls == [(2, 6), (2, 6)]


@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_saves_no_per_step_discretisation_for_backward(bidirectional):
    """Besides u (and parameters), autograd keeps only v = B~u and the states of each
    direction: no (B, L, P) Λ̄, γ or γv."""
    layer = S5SSM(3, 8, bidirectional=bidirectional).double()
    batch, length = 2, 50
    u = torch.randn(batch, length, 3, dtype=torch.float64, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(u, step_scale=torch.rand(batch, length, dtype=torch.float64) + 0.1)
    per_step = batch * length * layer.num_states * 16  # one complex128 (B, L, P)
    assert sorted(n for n in storages.values() if n >= per_step) == [per_step] * (2 + bidirectional)


def test_inference_mode_and_torch_compile():
    layer = S5SSM(3, 8, 2).eval()
    u = torch.randn(2, 6, 3)
    scale = torch.rand(2, 6) + 0.1
    with torch.no_grad():
        expected = layer(u, step_scale=scale)
    with torch.inference_mode():
        torch.testing.assert_close(layer(u, step_scale=scale), expected)
    compiled = torch.compile(lambda x, s: layer(x, step_scale=s), backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(u, scale), expected, rtol=1e-5, atol=1e-6)
