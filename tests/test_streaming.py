"""Streaming details beyond step == forward: the cached step operator and gradients through steps."""

import pytest
import torch

from s5ssm import S5SSM, S5Model, recommended_defaults


def run_steps(layer, u):
    state, ys = None, []
    for k in range(u.shape[1]):
        y, state = layer.step(u[:, k], state)
        ys.append(y)
    return torch.stack(ys, 1)


def test_cached_operator_follows_parameter_changes():
    torch.manual_seed(0)
    layer = S5SSM(4, 8, scan_backend="reference").double()
    u = torch.randn(2, 6, 4, dtype=torch.float64)
    with torch.inference_mode():
        before = run_steps(layer, u)
    with torch.no_grad():
        layer.log_step.add_(0.5)  # in place: same tensor, new version
        expected = layer(u)
        changed = run_steps(layer, u)
    assert not torch.allclose(before, changed)
    torch.testing.assert_close(changed, expected, rtol=1e-12, atol=1e-12)
    layer.B = torch.nn.Parameter(layer.B.detach() * 2)  # replaced: a new tensor
    with torch.no_grad():
        torch.testing.assert_close(run_steps(layer, u), layer(u), rtol=1e-12, atol=1e-12)
    layer.load_state_dict({k: v * 1.01 for k, v in layer.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(run_steps(layer, u), layer(u), rtol=1e-12, atol=1e-12)


def test_gradients_flow_through_steps():
    torch.manual_seed(1)
    layer = S5SSM(3, 4, scan_backend="reference").double()
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    grads_step = torch.autograd.grad(run_steps(layer, u).square().sum(), list(layer.parameters()))
    grads_full = torch.autograd.grad(layer(u).square().sum(), list(layer.parameters()))
    for a, b in zip(grads_step, grads_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_model_step_per_sequence_step_scale_matches_forward():
    torch.manual_seed(2)
    model = S5Model(embed_dim=3, hidden_size=8, state_size=8, num_layers=2, norm="layer", pooling="none",
                    scan_backend="reference").double().eval()  # fmt: skip
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    cache, outs = model.init_cache(2), []
    with torch.no_grad():
        for t in range(7):
            y, cache = model.step(x[:, t], cache, step_scale=scale)
            outs.append(y)
        torch.testing.assert_close(torch.stack(outs, 1), model(x, step_scale=scale), rtol=1e-10, atol=1e-10)


def test_recommended_defaults_stream():
    model = S5Model(embed_dim=5, output_dim=2, **recommended_defaults()).eval()
    cache = model.init_cache(1)
    with torch.inference_mode():
        y, cache = model.step(torch.randn(1, 5), cache)
    assert y.shape == (1, 2) and cache["count"] == 1


def test_stream_cache_is_read_only_and_copies_are_rechecked():
    """step trusts the states of the cache it returned (read-only); a changed copy is a
    plain dict and is checked in full, NaN included."""
    model = S5Model(embed_dim=3, hidden_size=4, state_size=4, num_layers=2, pooling="none").double().eval()
    cache = model.init_cache(1)
    x_t = torch.randn(1, 3, dtype=torch.float64)
    _, cache = model.step(x_t, cache)
    for mutate in (lambda: cache.__setitem__("count", 0), lambda: cache.update(count=0), lambda: cache.pop("sum")):
        with pytest.raises(TypeError, match="read-only"):
            mutate()
    poisoned = dict(cache, states=(cache["states"][0], torch.full_like(cache["states"][1], complex(float("nan"), 0))))
    with pytest.raises(ValueError, match=r"cache\['states'\]\[1\] contains NaN"):
        model.step(x_t, poisoned)
    y, _ = model.step(x_t, dict(cache))  # an unchanged plain copy is accepted
    assert torch.isfinite(y).all()


def test_states_given_as_conj_views_are_read_as_their_values():
    """A state with torch's lazy conjugate bit (x.conj()) is checked and used by value, in the
    layer's step and in the model's compiled and torch-ops steps."""
    torch.manual_seed(0)
    layer = S5SSM(4, 6).double()
    state = torch.randn(2, layer.num_states, dtype=torch.complex128)
    u = torch.randn(2, 4, dtype=torch.float64)
    for a, b in zip(layer.step(u, state.conj()), layer.step(u, state.conj().resolve_conj())):
        torch.testing.assert_close(a, b)
    model = S5Model(embed_dim=3, hidden_size=4, state_size=4, num_layers=2).double().eval()
    x_t = torch.randn(2, 3, dtype=torch.float64)
    _, cache = model.step(x_t, model.init_cache(2))
    lazy = dict(cache, states=tuple(s.conj() for s in cache["states"]))
    resolved = dict(cache, states=tuple(s.conj().resolve_conj() for s in cache["states"]))
    with torch.inference_mode():  # the compiled step
        torch.testing.assert_close(model.step(x_t, lazy)[0], model.step(x_t, resolved)[0])
    torch.testing.assert_close(model.step(x_t, lazy)[0], model.step(x_t, resolved)[0])  # torch ops
    nan = dict(cache, states=(cache["states"][0], torch.full_like(cache["states"][1], complex(float("nan"), 0)).conj()))
    with pytest.raises(ValueError, match=r"cache\['states'\]\[1\] contains NaN"):
        model.step(x_t, nan)
