"""The fused irregular-step scan (scan/irregular.py) against discretize + the reference scan."""

import itertools

import pytest
import torch

from s5ssm import S5SSM, ssm
from s5ssm.discretize import bilinear, zoh
from s5ssm.scan import linear_scan
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


@pytest.mark.parametrize("method,reverse,with_resets,with_state", list(itertools.product(RULES, [False, True], [False, True], [False, True])))  # fmt: skip
def test_values_and_gradients_equal_the_unfused_path(method, reverse, with_resets, with_state):
    lam, delta, scale, v, x0, resets = inputs()
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


@pytest.mark.parametrize("method,reverse", [("zoh", False), ("bilinear", True)])
def test_gradcheck_float64(method, reverse):
    *tensors, resets = inputs(B=2, L=4, P=3)
    args = tuple(t.requires_grad_() for t in tensors)

    def fused(lam, delta, scale, v, x0):
        return irregular_scan(lam, delta, scale, v, method, initial_state=x0, resets=resets, reverse=reverse)

    assert torch.autograd.gradcheck(fused, args)


def test_complex64_within_float32_round_off():
    lam, delta, scale, v, x0, resets = inputs(torch.complex128)
    expected = unfused("zoh", lam, delta, scale, v, x0, resets, False)
    got = irregular_scan(*(t.to(torch.complex64) if t.is_complex() else t.float() for t in (lam, delta, scale, v)),
                         "zoh", initial_state=x0.to(torch.complex64), resets=resets)  # fmt: skip
    torch.testing.assert_close(got.to(torch.complex128), expected, rtol=1e-5, atol=1e-5)


def test_argument_errors():
    lam, delta, scale, v, _, _ = inputs()
    with pytest.raises(ValueError, match="method must be one of"):
        irregular_scan(lam, delta, scale, v, "euler")


def layer_pair(seed, **options):
    torch.manual_seed(seed)
    fused = S5SSM(3, 8, 2, scan_backend="cpu", **options).double()
    with torch.no_grad():
        fused.log_step.add_(1.5)  # longer timescales: the state matters in short tests
    reference = S5SSM(3, 8, 2, scan_backend="reference", **options).double()
    reference.load_state_dict(fused.state_dict())
    return fused, reference


GRID = list(itertools.product(["zoh", "bilinear"], [True, False], [False, True], ["none", "right", "gaps"], [False, True]))


@pytest.mark.parametrize("discretization,conj_sym,bidirectional,mask_kind,clip_eigs", GRID)
def test_layer_fused_equals_reference_with_gradients(discretization, conj_sym, bidirectional, mask_kind, clip_eigs):
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
    resets = torch.zeros(B, L, dtype=torch.bool)
    resets[1, 3] = True
    kwargs = dict(step_scale=scale, mask=mask, resets=resets)
    if not bidirectional:
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
    calls = []
    real = ssm.irregular_scan
    monkeypatch.setattr(ssm, "irregular_scan", lambda *a, **k: calls.append(a[2].shape) or real(*a, **k))
    monkeypatch.delenv("S5SSM_SCAN_BACKEND", raising=False)
    layer = S5SSM(3, 8).double()
    u = torch.randn(2, 6, 3, dtype=torch.float64)
    layer(u, step_scale=torch.rand(2, 6, dtype=torch.float64) + 0.1)
    assert calls == [(2, 6)]
    layer(u, step_scale=torch.rand(2, dtype=torch.float64) + 0.1)  # per sequence: Λ̄ (B, 1, P), unfused
    layer(u, step_scale=0.5)
    S5SSM(3, 8, scan_backend="parallel").double()(u, step_scale=torch.rand(2, 6, dtype=torch.float64) + 0.1)
    assert calls == [(2, 6)]
    gaps = torch.tensor([[True, False, True, True, False, True]] * 2)
    layer(u, mask=gaps)  # masked gaps are zero-length steps: the fused path too
    assert calls == [(2, 6), (2, 6)]


def test_inference_mode_and_torch_compile():
    layer = S5SSM(3, 8, 2).eval()
    u = torch.randn(2, 6, 3)
    scale = torch.rand(2, 6) + 0.1
    with torch.no_grad():
        expected = layer(u, step_scale=scale)
    with torch.inference_mode():
        torch.testing.assert_close(layer(u, step_scale=scale), expected)
    if hasattr(torch.library, "custom_op"):
        compiled = torch.compile(lambda x, s: layer(x, step_scale=s), backend="aot_eager")
        with torch.no_grad():
            torch.testing.assert_close(compiled(u, scale), expected, rtol=1e-5, atol=1e-6)
