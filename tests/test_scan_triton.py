"""The Triton kernels (scan/triton_scan.py, scan/triton_irregular.py) against the reference.

Without a GPU they run on CPU tensors in Triton's interpreter (tests/conftest.py turns it
on); with one, on CUDA tensors (the `cuda` parameters, which benchmarks/gpu.sh runs). Small
tiles (BLOCK_L = 8, BLOCK_P = 2) make the small shapes span several chunks and state
blocks, the last of each partial: L = 21 (3 chunks), P = 3 (2 blocks), B = 1..3. Each case
runs once with the prefixes published (the normal look-back) and once folding every
aggregate back to the initial state (publish_prefix=False).

Tolerance: the kernels run in complex64 / float32 and are compared with the reference run
in complex128 on the same inputs: values and every gradient agree to 1e-5 of the largest
entry (max |got - want| <= 1e-5 max |want|; measured: below 1e-6).
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

pytest.importorskip("triton")

from s5ssm import S5SSM, S5Model  # noqa: E402
from s5ssm.discretize import bilinear, zoh  # noqa: E402
from s5ssm.scan import cpu, cpu_layer, irregular, linear_scan, nontemporal, reference, resolve_backend  # noqa: E402
from s5ssm.scan import triton_chunks, triton_irregular  # noqa: E402
from s5ssm.streaming import kernel as streaming_kernel  # noqa: E402

B, L, P = 3, 21, 3
TOLERANCE = 1e-5
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not triton_chunks.INTERPRETED, reason="Triton's interpreter is off")),
    pytest.param("cuda", marks=pytest.mark.cuda),
]


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(triton_chunks, "BLOCK_L", 8)
    monkeypatch.setattr(triton_chunks, "BLOCK_P", 2)


def assert_close(got, want, what):
    error = float((got.detach().to(want.dtype) - want.detach()).abs().max() / want.detach().abs().max())
    assert error <= TOLERANCE, f"{what}: relative error {error:.2e}"


def compare(run_ours, run_reference, inputs, device, seed=1):
    """Values and gradients (of a random linear function of the output) of run_ours on
    float32/complex64 copies of `inputs` on `device` vs run_reference on float64/complex128."""
    wide = [t.clone().requires_grad_() if t is not None else None for t in inputs]
    narrow = [
        t.to(device, torch.complex64 if t.is_complex() else torch.float32).requires_grad_() if t is not None else None
        for t in inputs
    ]
    want = run_reference(*wide)
    got = run_ours(*narrow)
    weight = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(seed))
    leaves = [(w, n) for w, n in zip(wide, narrow) if w is not None]
    grads_want = torch.autograd.grad((want * weight).real.sum(), [w for w, _ in leaves])
    grads_got = torch.autograd.grad((got * weight.to(got)).real.sum(), [n for _, n in leaves])
    assert_close(got.cpu(), want, "states")
    for i, (g, w) in enumerate(zip(grads_got, grads_want)):
        assert_close(g.cpu(), w, f"gradient {i}")


# ---------------------------------------------------------------------------- linear_scan
LINEAR_CASES = [  # (Λ̄ shape, initial state, resets, reverse, batch, publish_prefix): every option, each value
    ((P,), True, True, False, 2, True),
    ((P,), False, False, True, 1, False),
    ((B, 1, P), True, True, True, 3, True),
    ((1, L, P), True, False, False, 2, False),
    ((B, L, P), True, True, False, 3, True),
    ((B, L, P), False, True, True, 3, False),
    ((1, 1, P), True, True, True, 1, True),
]


def linear_inputs(lam_shape, batch, init, resets, seed=0):
    g = torch.Generator().manual_seed(seed)
    radius = 0.5 + 0.45 * torch.rand(lam_shape, generator=g, dtype=torch.float64)
    lam = torch.polar(radius, 3 * torch.rand(lam_shape, generator=g, dtype=torch.float64))
    bu = torch.randn(batch, L, P, generator=g, dtype=torch.complex128)
    x0 = torch.randn(batch, P, generator=g, dtype=torch.complex128) if init else None
    flags = torch.rand(batch, L, generator=g) < 0.25 if resets else None
    return lam, bu, x0, flags


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lam_shape,init,resets,reverse,batch,publish", LINEAR_CASES)
def test_linear_scan_matches_reference(lam_shape, init, resets, reverse, batch, publish, device, small_tiles,
                                       monkeypatch):  # fmt: skip
    monkeypatch.setattr(triton_chunks, "PUBLISH_PREFIX", publish)
    lam, bu, x0, flags = linear_inputs(lam_shape, batch, init, resets)
    on_device = flags.to(device) if flags is not None else None
    compare(
        lambda lam, bu, x0: linear_scan(lam, bu, initial_state=x0, resets=on_device, reverse=reverse, backend="triton"),
        lambda lam, bu, x0: reference.scan(lam, bu, x0, reverse, flags),
        [lam, bu, x0],
        device,
    )


@pytest.mark.cuda
def test_linear_scan_at_the_default_tiles():
    """Many chunks and state blocks at the default tile sizes, on a GPU (in the interpreter
    a default tile costs as much as ~250 small ones)."""
    g = torch.Generator().manual_seed(2)
    lam = torch.polar(0.5 + 0.5 * torch.rand(200, generator=g, dtype=torch.float64), torch.rand(200, generator=g))
    bu = torch.randn(2, 4000, 200, generator=g, dtype=torch.complex128)
    x0 = torch.randn(2, 200, generator=g, dtype=torch.complex128)
    flags = torch.rand(2, 4000, generator=g) < 0.001
    compare(
        lambda lam, bu, x0: linear_scan(lam, bu, initial_state=x0, resets=flags.cuda(), backend="triton"),
        lambda lam, bu, x0: reference.scan(lam, bu, x0, False, flags),
        [lam, bu, x0],
        "cuda",
    )


# ---------------------------------------------------------------------------- irregular_scan
IRREGULAR_CASES = [  # (method, reverse, resets, initial state, batch, publish_prefix)
    ("zoh", False, True, True, 2, True),
    ("zoh", True, False, False, 1, False),
    ("bilinear", False, False, True, 3, False),
    ("bilinear", True, True, True, 2, True),
]


def irregular_inputs(batch, init, resets, seed=0):
    g = torch.Generator().manual_seed(seed)
    real = torch.float64
    lam = torch.complex(-torch.rand(P, generator=g, dtype=real) - 0.1, 2 * torch.randn(P, generator=g, dtype=real))
    delta = 0.5 * torch.rand(P, generator=g, dtype=real) + 0.01
    scale = 2 * torch.rand(batch, L, generator=g, dtype=real)
    scale[0, 2] = 0.0  # a zero step (a masked step): the state passes through
    v = torch.randn(batch, L, P, generator=g, dtype=torch.complex128)
    x0 = torch.randn(batch, P, generator=g, dtype=torch.complex128) if init else None
    flags = torch.rand(batch, L, generator=g) < 0.2 if resets else None
    return lam, delta, scale, v, x0, flags


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method,reverse,resets,init,batch,publish", IRREGULAR_CASES)
def test_irregular_scan_matches_discretize_and_reference(method, reverse, resets, init, batch, publish, device,
                                                         small_tiles, monkeypatch):  # fmt: skip
    monkeypatch.setattr(triton_chunks, "PUBLISH_PREFIX", publish)
    lam, delta, scale, v, x0, flags = irregular_inputs(batch, init, resets)
    rule = {"zoh": zoh, "bilinear": bilinear}[method]
    on_device = flags.to(device) if flags is not None else None

    def unfused(lam, delta, scale, v, x0):
        lam_bar, gamma = rule(lam, scale[..., None] * delta)
        return reference.scan(lam_bar, gamma * v, x0, reverse, flags)

    def fused(lam, delta, scale, v, x0):
        return triton_irregular.irregular_scan(lam, delta, scale, v, method, initial_state=x0, resets=on_device,
                                               reverse=reverse)  # fmt: skip

    compare(fused, unfused, [lam, delta, scale, v, x0], device)


def test_irregular_scan_names_a_device_it_cannot_run_on(monkeypatch):
    lam, delta, scale, v, _, _ = irregular_inputs(1, False, False)
    monkeypatch.setattr(triton_irregular, "runs_on", lambda device: False)
    with pytest.raises(ValueError, match="v is on cpu: the triton irregular_scan runs on CUDA"):
        triton_irregular.irregular_scan(lam.to(torch.complex64), delta, scale, v.to(torch.complex64))


# ---------------------------------------------------------------------------- the layer and dispatch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_step,bidirectional", [(True, False), (False, True)])
def test_layer_on_triton_matches_reference(per_step, bidirectional, device, small_tiles):
    """S5SSM forward and parameter gradients on the triton backend (the fused irregular
    kernel for a per-step step_scale) equal the reference backend's in float64."""
    torch.manual_seed(0)
    layer = S5SSM(4, 6, bidirectional=bidirectional, scan_backend="triton").to(device)
    twin = S5SSM(4, 6, bidirectional=bidirectional, scan_backend="reference").double()
    twin.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    u = torch.randn(2, L, 4, dtype=torch.float64)
    scale = 0.5 + torch.rand(2, L, dtype=torch.float64) if per_step else 1.3
    resets = torch.rand(2, L) < 0.2
    step_scale = scale.float().to(device) if per_step else scale
    y = layer(u.float().to(device), step_scale=step_scale, resets=resets.to(device))
    want = twin(u, step_scale=scale, resets=resets)
    assert_close(y.cpu(), want, "y")
    weight = torch.randn(want.shape, dtype=torch.float64)
    grads = torch.autograd.grad((y * weight.to(y)).sum(), list(layer.parameters()))
    grads_want = torch.autograd.grad((want * weight).sum(), list(twin.parameters()))
    for (name, _), g, w in zip(layer.named_parameters(), grads, grads_want):
        assert_close(g.cpu(), w, name)


def test_auto_picks_triton_for_cuda_tensors_when_installed(monkeypatch):
    monkeypatch.delenv("S5SSM_SCAN_BACKEND", raising=False)
    assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    monkeypatch.setattr("s5ssm.scan.triton_installed", lambda: False)
    assert resolve_backend("auto", torch.device("cuda")) == "parallel"
    with pytest.raises(ValueError, match="needs the triton package"):
        resolve_backend("triton", torch.device("cuda"))


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(triton_chunks, "INTERPRETED", False)
    with pytest.raises(ValueError, match="backend 'triton' needs CUDA tensors"):
        linear_scan(torch.ones(2, dtype=torch.complex64), torch.ones(1, 3, 2, dtype=torch.complex64), backend="triton")


def _refuse_numba(monkeypatch):
    """Make every numba-compiled entry point of the package raise when called."""
    from numba.core.dispatcher import Dispatcher

    def refuse(*args, **kwargs):
        raise AssertionError("a numba kernel was called")

    for module in (cpu, cpu_layer, irregular, nontemporal, streaming_kernel):
        for name, value in vars(module).items():
            if isinstance(value, Dispatcher):
                monkeypatch.setattr(module, name, refuse)


def _train_and_step(model, device):
    """forward + backward (per-step step_scale, mask, resets), then eval-mode steps."""
    x = torch.randn(2, L, 3, device=device)
    mask = torch.ones(2, L, dtype=torch.bool, device=device)
    mask[1, 15:] = False
    scale = 0.5 + torch.rand(2, L, device=device)
    model(x, mask=mask, step_scale=scale).sum().backward()
    model(x, step_scale=1.5).sum().backward()
    model.eval()
    with torch.no_grad():
        cache = model.init_cache(2)
        for k in range(3):
            _, cache = model.step(x[:, k], cache)
    return model


@pytest.mark.skipif(not triton_chunks.INTERPRETED, reason="Triton's interpreter is off")
def test_the_triton_backend_never_calls_numba(monkeypatch, small_tiles):
    """What decides the paths on CUDA is the backend (triton there, or parallel): the
    fused CPU layer, the CPU scans and the compiled step are not taken (test below for
    CUDA itself)."""
    model = S5Model(embed_dim=3, output_dim=2, hidden_size=4, state_size=4, num_layers=2, norm="layer",
                    scan_backend="triton")  # fmt: skip
    _refuse_numba(monkeypatch)
    with pytest.raises(AssertionError, match="numba"):  # the check itself works
        S5SSM(4, 4, scan_backend="cpu")(torch.randn(1, 3, 4))
    _train_and_step(model, "cpu")


@pytest.mark.cuda
def test_cuda_paths_never_call_numba(monkeypatch):
    model = S5Model(embed_dim=3, output_dim=2, hidden_size=4, state_size=4, num_layers=2, norm="layer").cuda()
    _refuse_numba(monkeypatch)
    _train_and_step(model, "cuda")


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="custom ops need torch >= 2.4")
@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_sees_the_custom_ops(device, small_tiles):
    lam, bu, x0, flags = (t.to(device, torch.complex64) if t.is_complex() else t.to(device)
                          for t in linear_inputs((P,), 2, True, True))  # fmt: skip
    lam.requires_grad_()
    bu.requires_grad_()

    def loss(lam, bu):
        return (linear_scan(lam, bu, initial_state=x0, resets=flags, backend="triton") * 1.5).abs().sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(lam, bu), (lam, bu))
    want = torch.autograd.grad(loss(lam, bu), (lam, bu))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------- compiled for the GPU
COMPILE_SCRIPT = textwrap.dedent('''
    """Compile every kernel for sm_80 as it is launched, without a GPU; print ptxas's spills."""
    import os, subprocess, sys, tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from s5ssm.scan import triton_chunks, triton_irregular, triton_scan

    POINTERS = {"resets_ptr": "*u8", "status_ptr": "*i32"}
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    for kernel in (triton_scan._forward_kernel, triton_scan._backward_kernel, triton_irregular._forward_kernel,
                   triton_irregular._backward_kernel):
        names = kernel.arg_names
        flags = [n for n in names if n.isupper() and n not in ("BLOCK_L", "BLOCK_P", "PUBLISH_PREFIX")]
        for value in (False, True):
            constants = {n: value for n in flags}
            constants.update(BLOCK_L=triton_chunks.BLOCK_L, BLOCK_P=triton_chunks.BLOCK_P, PUBLISH_PREFIX=True)
            signature = {n: "constexpr" if n in constants else POINTERS.get(n, "*fp32" if n.endswith("_ptr") else "i32")
                         for n in names}
            # launched with 16-aligned tensors and sizes divisible by 16, as at P = 128
            attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n not in constants}
            compiled = triton.compile(ASTSource(kernel, signature, constants, attrs), target=GPUTarget("cuda", 80, 32),
                                      options={"num_warps": triton_chunks.WARPS})
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as ptx:
                ptx.write(compiled.asm["ptx"])
            report = subprocess.run([ptxas, "-v", "--gpu-name=sm_80", ptx.name, "-o", os.devnull],
                                    capture_output=True, text=True, check=True).stderr
            spills = [line for line in report.splitlines() if "spill" in line]
            print(kernel.__name__, value, "|".join(spills), flush=True)
''')


def test_every_kernel_compiles_for_the_gpu_without_spills():
    """The interpreter runs the kernels as Python; this compiles them as the GPU would run
    them (to cubin for sm_80, with triton's bundled ptxas: no GPU needed), every constexpr
    branch taken, and reads ptxas's report: no register spills at the launch configuration."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 8, out.stdout
    for line in lines:
        assert "0 bytes spill stores, 0 bytes spill loads" in line, line

