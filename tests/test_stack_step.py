"""The compiled streaming step (s5ssm.streaming, streaming/kernel.py) against the torch-ops step.

The reference is the same model with scan_backend="reference", which keeps `S5Model.step`
in torch ops (block.recur / ssm.recur).
"""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from s5ssm import S5Model, StreamCache, recommended_defaults, streaming


def stream(model, x, step_scale=None, cache=None):
    """Run model.step over x (B, T, ...) under inference_mode; returns (outputs (B, T, O), cache)."""
    cache = model.init_cache(x.shape[0]) if cache is None else cache
    outs = []
    with torch.inference_mode():
        for t in range(x.shape[1]):
            y, cache = model.step(x[:, t], cache, step_scale=step_scale)
            outs.append(y)
    return torch.stack(outs, 1), cache


def reference_of(model):
    """A copy of the model whose step runs in torch ops."""
    ref = copy.deepcopy(model)
    for layer in ref.layers:
        layer.ssm.scan_backend = "reference"
    return ref


def assert_same_stream(model, x, step_scale=None, tol=1e-12):
    ref = reference_of(model)
    got, cache = stream(model, x, step_scale)
    assert streaming.compiled_step_for(model) is not None, "the compiled step was not used"
    assert streaming.compiled_step_for(ref) is None
    want, ref_cache = stream(ref, x, step_scale)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for a, b in zip(cache["states"], ref_cache["states"]):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    torch.testing.assert_close(cache["sum"], ref_cache["sum"], rtol=tol, atol=tol)
    assert cache["count"] == ref_cache["count"] == x.shape[1]


CASES = [
    dict(),
    dict(norm="rms", prenorm=False, activation="gelu"),
    dict(norm="batch", activation="full_glu", discretization="bilinear"),
    dict(norm="layer", prenorm=False, activation="half_glu2", clip_eigs=True),
    dict(norm="batch", prenorm=False, activation="half_glu1", conj_sym=False, blocks=2),
    dict(pooling="mean", output_dim=None, C_init="complex_normal"),
    dict(pooling="none", step_rescale=2.5, clip_eigs=True, discretization="bilinear"),
]


@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("batch", [1, 9])  # 9 runs the multi-threaded kernel
def test_matches_torch_ops_float64(options, batch):
    torch.manual_seed(0)
    options = {"output_dim": 3, "pooling": "last", **options}
    model = S5Model(embed_dim=5, hidden_size=12, state_size=8, num_layers=3, **options).double()
    if options.get("norm") == "batch":  # give the running statistics non-trivial values
        model.train()
        with torch.no_grad():
            model(torch.randn(16, 20, 5, dtype=torch.float64))
    model.eval()
    x = torch.randn(batch, 9, 5, dtype=torch.float64)
    assert_same_stream(model, x)


@pytest.mark.parametrize("scale", ["float", "per_sequence"])
def test_step_scale(scale):
    torch.manual_seed(1)
    model = S5Model(embed_dim=4, hidden_size=8, state_size=8, num_layers=2, norm="layer", output_dim=2).double().eval()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    step_scale = 0.37 if scale == "float" else torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    assert_same_stream(model, x, step_scale)


def test_float32_and_recommended_defaults():
    torch.manual_seed(2)
    model = S5Model(embed_dim=6, output_dim=4, **recommended_defaults()).eval()
    x = torch.randn(2, 30, 6)
    assert_same_stream(model, x, tol=1e-5)
    with torch.inference_mode():  # and the stream equals forward on every prefix
        full = torch.stack([model(x[:, : t + 1]) for t in range(x.shape[1])], 1)
    torch.testing.assert_close(stream(model, x)[0], full, rtol=1e-5, atol=1e-5)


def test_token_encoder_runs_in_torch_before_the_kernel():
    torch.manual_seed(3)
    tokens = S5Model(vocab_size=11, hidden_size=8, state_size=8, num_layers=2, norm="layer", output_dim=3)
    assert_same_stream(tokens.double().eval(), torch.randint(0, 11, (2, 6)))
    assert not streaming.compiled_step_for(tokens).encode_in_kernel


def test_conv_encoder_runs_in_torch_before_the_kernel():
    images = S5Model(embed_dim=48, image_shape=(6, 8), encoder="conv", hidden_size=8, state_size=8, output_dim=2)
    assert_same_stream(images.double().eval(), torch.rand(2, 4, 48, dtype=torch.float64))
    assert not streaming.compiled_step_for(images).encode_in_kernel


def model_and_input(seed=4):
    torch.manual_seed(seed)
    model = S5Model(embed_dim=3, hidden_size=8, state_size=8, num_layers=2, norm="layer", output_dim=2)
    return model.double().eval(), torch.randn(2, 6, 3, dtype=torch.float64)


def test_sees_in_place_updates_of_every_parameter():
    model, x = model_and_input()
    ref = reference_of(model)
    stream(model, x)
    with torch.no_grad():
        for i, (p, q) in enumerate(zip(model.parameters(), ref.parameters())):
            delta = 0.05 * torch.randn_like(p)
            # in place, every other one through .data (no version bump): the kernel reads them live
            (p.data if i % 2 else p).add_(delta)
            q.add_(delta)
    torch.testing.assert_close(stream(model, x)[0], stream(ref, x)[0], rtol=1e-12, atol=1e-12)


def test_rebuilds_after_replacement_conversion_and_option_changes():
    model, x = model_and_input(5)
    first = stream(model, x)[0]
    built = streaming.compiled_step_for(model)
    model.layers[0].ssm.B = nn.Parameter(model.layers[0].ssm.B.detach() * 2)  # a new tensor
    model.head = nn.Linear(8, 2).double().eval()  # a new module
    model.layers[1].ssm.clip_eigs = True  # an option the kernel reads
    model.layers[1].ssm.discretization = "bilinear"
    assert streaming.compiled_step_for(model) is not built
    changed = stream(model, x)[0]
    assert not torch.allclose(first, changed)
    torch.testing.assert_close(changed, stream(reference_of(model), x)[0], rtol=1e-12, atol=1e-12)
    model.float()  # .data replaced in every parameter
    torch.testing.assert_close(stream(model, x.float())[0], changed.float(), rtol=1e-5, atol=1e-5)


def test_torch_ops_when_training_or_when_gradients_are_wanted():
    model, x = model_and_input(6)
    model.layers[1].train()  # one submodule in training mode is enough
    assert streaming.compiled_step_for(model) is None
    model.eval()
    y, _ = model.step(x[:, 0], model.init_cache(2))  # gradients enabled, parameters require them
    assert y.requires_grad
    model.requires_grad_(False)
    y, _ = model.step(x[:, 0], model.init_cache(2))
    assert not y.requires_grad and streaming.compiled_step_for(model) is not None


def test_cache_is_fresh_each_frame_and_plain_dicts_are_checked():
    model, x = model_and_input(7)
    cache = model.init_cache(2)
    with torch.inference_mode():
        _, after = model.step(x[:, 0], cache)
        assert cache["count"] == 0 and all(bool((s == 0).all()) for s in cache["states"])
        assert isinstance(after, StreamCache) and after["count"] == 1
        # a plain dict copy takes the checked path and gives the same frame
        y_plain, _ = model.step(x[:, 1], dict(after))
        y_cache, _ = model.step(x[:, 1], after)
        torch.testing.assert_close(y_plain, y_cache, rtol=0, atol=0)
        bad = dict(after, sum=after["sum"][:1])
        with pytest.raises(ValueError, match=r"cache\['sum'\] must have shape"):
            model.step(x[:, 1], bad)
        other = S5Model(embed_dim=3, hidden_size=8, state_size=16, num_layers=2, norm="layer").double().eval()
        with pytest.raises(ValueError, match=r"cache\['states'\]\[0\] must have shape"):
            model.step(x[:, 1], other.init_cache(2))


def test_non_finite_frame_is_an_error_naming_x_t():
    model, x = model_and_input(8)
    frame = x[:, 0].clone()
    frame[1, 2] = float("nan")
    with torch.inference_mode(), pytest.raises(ValueError, match="x_t contains NaN or Inf"):
        model.step(frame, model.init_cache(2))


def test_discretisation_follows_changed_step_scale_and_eigenvalues():
    """The kernel discretises every frame from the live Λ and log Δ at the frame's step."""
    model, x = model_and_input(9)
    ref = reference_of(model)
    for scale in (1.0, 1.0, 2.0, 1.0):
        torch.testing.assert_close(stream(model, x, scale)[0], stream(ref, x, scale)[0], rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        for m in (model, ref):
            m.layers[0].ssm.Lambda_im.mul_(1.5)
            m.layers[1].ssm.log_step.add_(0.3)
    torch.testing.assert_close(stream(model, x)[0], stream(ref, x)[0], rtol=1e-12, atol=1e-12)


def test_compiled_step_does_not_keep_the_model_alive():
    model, x = model_and_input(10)
    stream(model, x)
    assert streaming.compiled_step_for(model) is not None
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None
