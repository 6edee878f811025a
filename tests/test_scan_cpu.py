"""The compiled CPU scan (scan/cpu.py) against the reference loop: values, gradients, compile."""

import itertools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s5ssm.scan import cpu, linear_scan, reference

B, L, P = 3, 7, 5
LAMBDA_SHAPES = [(P,), (B, 1, P), (1, L, P), (B, L, P), (1, 1, P)]


@pytest.fixture(params=["plain", "streamed"])
def stores(request, monkeypatch):
    """Runs a test with the kernels' outputs written by plain stores, and again streamed
    (non-temporal, scan/nontemporal.py) whatever their size."""
    if request.param == "streamed":
        monkeypatch.setattr(cpu, "streams", lambda nbytes: True)
    return request.param


def random_inputs(lam_shape, batch, length, size, dtype=torch.complex128, init=True, resets=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    radius = torch.rand(lam_shape, generator=g, dtype=real) * 0.95
    lam = (radius * torch.exp(1j * 3 * torch.rand(lam_shape, generator=g, dtype=real))).to(dtype)
    bu = torch.randn(batch, length, size, generator=g, dtype=dtype)
    s0 = torch.randn(batch, size, generator=g, dtype=dtype) if init else None
    r = (torch.rand(batch, length, generator=g) < 0.3) if resets else None
    return lam, bu, s0, r


@pytest.mark.parametrize(
    "lam_shape,init,resets,reverse", list(itertools.product(LAMBDA_SHAPES, [False, True], [False, True], [False, True]))
)
def test_matches_reference_and_gradcheck(lam_shape, init, resets, reverse, stores):
    lam, bu, s0, r = random_inputs(lam_shape, B, L, P, init=init, resets=resets)
    torch.testing.assert_close(cpu.scan(lam, bu, s0, reverse, r), reference.scan(lam, bu, s0, reverse, r), rtol=1e-12, atol=1e-12)
    leaves = [t.requires_grad_() for t in (lam, bu) + ((s0,) if init else ())]
    fn = lambda *xs: cpu.scan(xs[0], xs[1], xs[2] if init else None, reverse, r)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(leaves))


@pytest.mark.parametrize("reverse", [False, True])
def test_float32_values_and_gradients_match_reference(reverse, stores):
    lam, bu, s0, r = random_inputs((P * 4,), 4, 300, P * 4, dtype=torch.complex64, seed=3)
    for t in (lam, bu, s0):
        t.requires_grad_()
    weight = torch.randn(4, 300, P * 4, dtype=torch.complex64)
    outs, grads = [], []
    for fn in (cpu.scan, reference.scan):
        out = fn(lam, bu, s0, reverse, r)
        outs.append(out)
        grads.append(torch.autograd.grad((out * weight).real.sum(), (lam, bu, s0)))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lam_shape", [(P,), (B, L, P)])
def test_lazily_conjugated_and_strided_inputs(lam_shape):
    """conj() views (torch's conjugate bit) and non-contiguous inputs are read as their
    values: the kernels see NumPy copies of them, not the raw memory."""
    lam, bu, s0, r = random_inputs(lam_shape, B, L, P)
    leaves = [t.requires_grad_() for t in (lam, bu, s0)]
    weight = torch.randn(B, L, P, dtype=bu.dtype)
    args = (lam.conj(), bu.transpose(0, 1).contiguous().transpose(0, 1).conj(), s0.conj(), False, r)
    assert args[0].is_conj() and args[1].is_conj() and not args[1].is_contiguous()
    outs = [fn(*args) for fn in (cpu.scan, reference.scan)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    grads = [torch.autograd.grad((out * weight).real.sum(), leaves) for out in outs]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_in_place_kernels_refuse_a_buffer_they_would_only_copy():
    """in_place writes into the caller's buffer; a non-contiguous one would be copied for
    the kernel and the result lost, so it is an error (the fused layer passes its own)."""
    lam, bu, _, _ = random_inputs((P,), B, L, P)
    strided = bu.transpose(0, 1).contiguous().transpose(0, 1)
    with pytest.raises(ValueError, match="contiguous"):
        cpu._forward_impl(lam, strided, None, None, False, in_place=True)
    states = cpu._forward_impl(lam, bu, None, None, False)
    with pytest.raises(ValueError, match="contiguous"):
        cpu._backward_impl(lam, states, None, None, False, strided, in_place=True)
    copy = bu.clone()  # and a contiguous buffer is written in place
    assert cpu._forward_impl(lam, copy, None, None, False, in_place=True).data_ptr() == copy.data_ptr()
    torch.testing.assert_close(copy, states)


def test_length_one_and_batch_one():
    for shape in [(1,), (1, 1, 1)]:
        lam, bu, s0, r = random_inputs(shape, 1, 1, 1)
        torch.testing.assert_close(cpu.scan(lam, bu, s0, False, r), reference.scan(lam, bu, s0, False, r))


def test_auto_backend_on_cpu_is_the_compiled_one(monkeypatch):
    calls = []
    monkeypatch.setattr(cpu, "scan", lambda *args: calls.append(args) or reference.scan(*args))
    monkeypatch.delenv("S5SSM_SCAN_BACKEND", raising=False)
    lam, bu, _, _ = random_inputs((P,), B, L, P)
    linear_scan(lam, bu)
    assert len(calls) == 1


def test_inference_mode_and_no_grad():
    lam, bu, s0, r = random_inputs((B, L, P), B, L, P)
    expected = reference.scan(lam, bu, s0, False, r)
    with torch.inference_mode():
        torch.testing.assert_close(cpu.scan(lam, bu, s0, False, r), expected)
    with torch.no_grad():
        out = cpu.scan(lam.requires_grad_(), bu, s0, False, r)
    assert not out.requires_grad


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="custom ops need torch >= 2.4")
def test_torch_compile_fullgraph_forward_and_backward():
    lam, bu, s0, r = random_inputs((P,), B, L, P)
    lam.requires_grad_()
    bu.requires_grad_()

    def loss(lam, bu):
        return (linear_scan(lam, bu, initial_state=s0, resets=r, backend="cpu") * 1.5).abs().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(lam, bu), (lam, bu))
    want = torch.autograd.grad(loss(lam, bu), (lam, bu))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 4),
    length=st.integers(1, 100),
    size=st.integers(1, 40),
    varying=st.booleans(),
    reverse=st.booleans(),
)
def test_property_random_shapes(batch, length, size, varying, reverse, stores):
    """Values and gradients at random shapes (block edges: test_walks_across_blocks_of_time_steps)."""
    shape = (batch, length, size) if varying else (size,)
    lam, bu, s0, r = random_inputs(shape, batch, length, size, seed=batch * 1000 + length)
    leaves = [t.requires_grad_() for t in (lam, bu, s0)]
    weight = torch.randn(batch, length, size, dtype=bu.dtype, generator=torch.Generator().manual_seed(length))
    outs, grads = [], []
    for fn in (cpu.scan, reference.scan):
        outs.append(fn(lam, bu, s0, reverse, r))
        grads.append(torch.autograd.grad((outs[-1] * weight).real.sum(), leaves))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _kernels_match_reference(inputs, reverse):
    """The forward kernel (out of place and in place) and the backward kernel (both ways)
    against the reference scan and its autograd, at complex64 or complex128 tolerances."""
    lam, bu, s0, r = inputs
    tol = {"rtol": 1e-4, "atol": 1e-4} if bu.dtype == torch.complex64 else {"rtol": 1e-11, "atol": 1e-11}
    want = reference.scan(lam, bu, s0, reverse, r)
    torch.testing.assert_close(cpu._forward_impl(lam, bu, s0, r, reverse), want, **tol)
    torch.testing.assert_close(cpu._forward_impl(lam, bu.clone(), s0, r, reverse, in_place=True), want, **tol)
    grad = torch.randn(bu.shape, dtype=bu.dtype, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_() for t in (lam, bu, s0)]
    expected = torch.autograd.grad(reference.scan(*leaves, reverse, r), leaves, grad)
    for in_place in (False, True):
        got = cpu._backward_impl(lam, want, s0, r, reverse, grad.clone(), in_place=in_place)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("length", [cpu._BLOCK - 1, cpu._BLOCK + 1, 2 * cpu._BLOCK + 37])
@pytest.mark.parametrize("reverse", [False, True])
def test_walks_across_blocks_of_time_steps(dtype, length, reverse, stores):
    """Both backwards walks go block by block (cpu._BLOCK): values, the in-place forward, and
    gradients against the reference at lengths around and across block edges, in complex64
    (16 floats per cache line) and complex128 (8)."""
    batch, size = 2, 19
    _kernels_match_reference(random_inputs((size,), batch, length, size, dtype=dtype, seed=length), reverse)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lam_shape", [(40,), (1, 150, 40)])
def test_sequences_split_into_blocks_of_states(dtype, reverse, lam_shape, stores, monkeypatch):
    """With fewer sequences than threads each sequence's states are split between tasks
    (cpu._splits); here into three blocks, whose rows start mid-line: values and gradients
    against the reference, in place too."""
    monkeypatch.setattr(cpu, "_splits", lambda batch, size: 3)
    batch, length, size = 1, 150, 40
    _kernels_match_reference(random_inputs(lam_shape, batch, length, size, dtype=dtype, seed=5), reverse)


def test_compiled_scans_keep_torchs_thread_count():
    """numba's OpenMP pool must not change torch's thread count (OMP_NUM_THREADS=1 stays 1)."""
    import os
    import subprocess
    import sys

    script = ("import torch\nfrom s5ssm.model import S5Model\n"
              "m = S5Model(1, 8, 4, 1, norm='batch').train()\n"
              "m(torch.randn(2, 40, 1), mask=torch.rand(2, 40) > 0.3).sum().backward()\n"
              "print(torch.get_num_threads())\n")  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "1"
