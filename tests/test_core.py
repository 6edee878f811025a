"""Every backend of the layer's core (scan/core.py) against `s5_core_reference`: the output,
the returned states and the gradients of every input and parameter.

In float64 for "cpu" (whose cases reach both the fused cpu_layer Function and the separate
ops: return_states and a per-sequence step_scale take the latter) and "parallel", at a
length across the compiled kernels' blocks of time steps. "triton" runs in Triton's
interpreter (tests/conftest.py) in float32 on a few small cases with small tiles, as in
tests/test_scan_triton.py, compared with the float64 reference to 1e-5 of the largest
entry.

Masks reach the core as S5SSM.forward normalises them: right padding as `padding`, gaps as
steps of zero step_scale.
"""

import pytest
import torch

from s5ssm.scan import core, cpu

H, P = 4, 6
# name: (step_scale "float" | "B" | "BL", options); "state", "gaps", "padding", "resets"
# and "bidirectional" build inputs, the rest go to the core as they are.
CASES = {
    "float_zoh": ("float", {}),
    "float_bilinear_padding_resets_state": ("float", dict(method="bilinear", padding=True, resets=True, state=True)),
    "float_bidirectional_padding_resets": ("float", dict(bidirectional=True, padding=True, resets=True)),
    "float_return_states_no_conj_sym": ("float", dict(return_states=True, conj_sym=False, state=True, padding=True)),
    "B_zoh_state_resets": ("B", dict(state=True, resets=True)),
    "B_bilinear_bidirectional_padding": ("B", dict(method="bilinear", bidirectional=True, padding=True)),
    "BL_zoh_gaps_resets_state": ("BL", dict(gaps=True, resets=True, state=True)),
    "BL_bilinear_padding": ("BL", dict(method="bilinear", padding=True)),
    "BL_bidirectional_gaps_resets": ("BL", dict(bidirectional=True, gaps=True, resets=True)),
    "BL_return_states_padding_state": ("BL", dict(return_states=True, padding=True, state=True, resets=True)),
}
TRITON_CASES = ["float_bidirectional_padding_resets", "BL_zoh_gaps_resets_state", "BL_return_states_padding_state"]


def make_inputs(case: str, batch: int, length: int, seed: int = 0):
    """(tensors, options): the core's differentiable inputs (float64 leaves) and keywords."""
    kind, spec = CASES[case]
    spec = dict(spec)
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, dtype=torch.float64, generator=g)  # noqa: E731
    randn = lambda *shape: torch.randn(*shape, dtype=torch.float64, generator=g)  # noqa: E731
    directions = 2 if spec.pop("bidirectional", False) else 1
    tensors = {
        "u": randn(batch, length, H),
        "Lambda": torch.complex(-(0.05 + rand(P)), 3 * randn(P)),
        "log_step": torch.log(0.01 + 0.3 * rand(P)),
        "B": randn(P, H, 2) / H**0.5,
        **{f"C{d}": randn(H, P, 2) / P**0.5 for d in range(directions)},
        "D": randn(H),
    }
    if spec.pop("state", False):
        tensors["initial_state"] = torch.complex(randn(batch, P), randn(batch, P))
    scale = {"float": None, "B": 0.5 + rand(batch), "BL": 0.2 + 2 * rand(batch, length)}[kind]
    if spec.pop("gaps", False):
        scale = torch.where(rand(batch, length) < 0.3, torch.zeros_like(scale), scale)
    if scale is not None:
        tensors["step_scale"] = scale
    options = {"method": "zoh", "conj_sym": True, "step_scale": 1.3 if scale is None else None, **spec}
    if options.pop("padding", False):
        options["padding"] = torch.arange(length)[None, :] < torch.tensor([length, 20, 7, 1][:batch])[:, None]
    if options.pop("resets", False):
        resets = rand(batch, length) < 0.1
        options["resets"] = resets
        options["reverse_resets"] = torch.cat([resets[:, 1:], resets.new_zeros(batch, 1)], dim=1)
    return tensors, options


def run(function, tensors, options, **kwargs):
    """The core's outputs (y, and the states with return_states) as a tuple."""
    t = dict(tensors)
    C = tuple(t.pop(name) for name in ("C0", "C1") if name in t)
    if "step_scale" in t:
        options = {**options, "step_scale": t.pop("step_scale")}
    out = function(t.pop("u"), t.pop("Lambda"), t.pop("log_step"), t.pop("B"), C, t.pop("D"), **t, **options, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def outputs_and_gradients(function, tensors, options, seed=1, **kwargs):
    """{name: value} of the outputs and of the gradients of a random linear function of them."""
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    outs = run(function, leaves, options, **kwargs)
    g = torch.Generator().manual_seed(seed)
    wide = {torch.float32: torch.float64, torch.complex64: torch.complex128}  # the same draws in every precision
    weights = [torch.randn(o.shape, dtype=wide.get(o.dtype, o.dtype), generator=g).to(o) for o in outs]
    grads = torch.autograd.grad(outs, list(leaves.values()), weights)
    names = ["y", "states"][: len(outs)] + [f"d_{k}" for k in leaves]
    return dict(zip(names, [*outs, *grads]))


def reference_results(case, batch, length):
    tensors, options = make_inputs(case, batch, length)
    return tensors, options, outputs_and_gradients(core.s5_core_reference, tensors, options)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("backend", ["cpu", "parallel"])
def test_backend_equals_the_reference(backend, case):
    tensors, options, want = reference_results(case, 3, cpu._BLOCK + 5)
    got = outputs_and_gradients(core.s5_core, tensors, options, backend=backend)
    assert got.keys() == want.keys()
    for name, value in want.items():
        scale = float(value.detach().abs().max())
        torch.testing.assert_close(got[name], value, rtol=1e-9, atol=1e-10 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("case", TRITON_CASES)
def test_triton_equals_the_reference(case, monkeypatch):
    pytest.importorskip("triton")
    from s5ssm.scan import triton_chunks

    if not triton_chunks.INTERPRETED:
        pytest.skip("Triton's interpreter is off")
    monkeypatch.setattr(triton_chunks, "BLOCK_L", 8)  # several chunks and state blocks, the last partial
    monkeypatch.setattr(triton_chunks, "BLOCK_P", 4)
    tensors, options, want = reference_results(case, 2, 21)
    narrow = {k: v.to(torch.complex64 if v.is_complex() else torch.float32) for k, v in tensors.items()}
    got = outputs_and_gradients(core.s5_core, narrow, options, backend="triton")
    for name, value in want.items():
        error = float((got[name].detach().to(value.dtype) - value.detach()).abs().max() / value.detach().abs().max())
        assert error <= 1e-5, f"{name}: relative error {error:.2e}"


def test_the_cpu_backend_fuses_unless_told_otherwise():
    """cpu_layer's Function for a float or per-step step_scale; the separate ops for the
    states, a per-sequence step_scale and autocast."""
    u = torch.zeros(2, 3, H)
    assert core.fuses(u, 1.0, False) and core.fuses(u, torch.ones(2, 3), False)
    assert not core.fuses(u, 1.0, True) and not core.fuses(u, torch.ones(2), False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not core.fuses(u, 1.0, False)
