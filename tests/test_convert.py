"""from_official: our layer reproduces the official JAX layer's output.

The official forward (lindermanlab/S5, s5/ssm.py: discretize, apply_ssm, D u) is restated
here in plain NumPy float64, independently of s5ssm, and fed arrays built in the official
parameter layout.
"""

import numpy as np
import pytest
import torch

from s5ssm.convert import from_official


def official_layout(rng, H, P, bidirectional=False, complex_normal=False):
    params = {
        "Lambda_re": -rng.uniform(0.05, 1.0, P),
        "Lambda_im": rng.normal(0, 3.0, P),
        "B": rng.normal(0, 0.3, (P, H, 2)),
        "D": rng.normal(0, 1.0, H),
        "log_step": rng.uniform(np.log(1e-3), np.log(1e-1), (P, 1)),
    }
    if bidirectional and complex_normal:
        params["C"] = rng.normal(0, 0.5, (H, 2 * P, 2))
    elif bidirectional:
        params["C1"] = rng.normal(0, 0.5, (H, P, 2))
        params["C2"] = rng.normal(0, 0.5, (H, P, 2))
    else:
        params["C"] = rng.normal(0, 0.5, (H, P, 2))
    return params


def official_forward(params, u, conj_sym, bidirectional, discretization, clip_eigs, step_rescale):
    """The official S5SSM.__call__ on one sequence u (L, H), in NumPy float64."""
    Lambda_re = np.clip(params["Lambda_re"], None, -1e-4) if clip_eigs else params["Lambda_re"]
    Lambda = Lambda_re + 1j * params["Lambda_im"]
    B_tilde = params["B"][..., 0] + 1j * params["B"][..., 1]
    step = step_rescale * np.exp(params["log_step"][:, 0])
    if discretization == "zoh":
        Lambda_bar = np.exp(Lambda * step)
        B_bar = (1 / Lambda * (Lambda_bar - 1))[:, None] * B_tilde
    else:
        BL = 1 / (1 - (step / 2.0) * Lambda)
        Lambda_bar = BL * (1 + (step / 2.0) * Lambda)
        B_bar = (BL * step)[:, None] * B_tilde
    if "C1" in params:
        C_tilde = np.concatenate(
            [params[k][..., 0] + 1j * params[k][..., 1] for k in ("C1", "C2")], axis=-1
        )
    else:
        C_tilde = params["C"][..., 0] + 1j * params["C"][..., 1]
    Bu = u @ B_bar.T
    xs = np.zeros_like(Bu)
    x = np.zeros(Bu.shape[1], dtype=complex)
    for k in range(len(u)):
        x = Lambda_bar * x + Bu[k]
        xs[k] = x
    if bidirectional:
        xs2 = np.zeros_like(Bu)
        x = np.zeros(Bu.shape[1], dtype=complex)
        for k in reversed(range(len(u))):
            x = Lambda_bar * x + Bu[k]
            xs2[k] = x
        xs = np.concatenate([xs, xs2], axis=-1)
    ys = (xs @ C_tilde.T).real * (2 if conj_sym else 1)
    return ys + params["D"] * u


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
@pytest.mark.parametrize(
    "bidirectional,complex_normal", [(False, False), (True, False), (True, True)]
)
@pytest.mark.parametrize("conj_sym", [True, False])
@pytest.mark.parametrize("clip_eigs", [False, True])
def test_matches_official_forward(discretization, bidirectional, complex_normal, conj_sym, clip_eigs):
    rng = np.random.default_rng(0)
    H, P, L = 5, 6, 17
    params = official_layout(rng, H, P, bidirectional, complex_normal)
    if clip_eigs:
        params["Lambda_re"][0] = 0.3  # an unstable eigenvalue that clipping must tame
    options = dict(conj_sym=conj_sym, bidirectional=bidirectional, discretization=discretization,
                   clip_eigs=clip_eigs, step_rescale=1.7)  # fmt: skip
    u = rng.normal(size=(3, L, H))
    expected = np.stack([official_forward(params, seq, **options) for seq in u])

    layer64 = from_official(params, dtype=torch.float64, **options)
    got64 = layer64(torch.from_numpy(u)).detach().numpy()
    np.testing.assert_allclose(got64, expected, rtol=1e-10, atol=1e-10)

    layer32 = from_official({k: v.astype(np.float32) for k, v in params.items()}, **options)
    got32 = layer32(torch.from_numpy(u).float()).detach().numpy()
    np.testing.assert_allclose(got32, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_log_step_may_be_flat():
    params = official_layout(np.random.default_rng(1), 3, 4)
    params["log_step"] = params["log_step"][:, 0]
    layer = from_official(params, dtype=torch.float64)
    assert torch.equal(layer.log_step, torch.from_numpy(params["log_step"]))
    assert layer.state_size == 8 and layer.num_states == 4 and layer.hidden_size == 3


@pytest.mark.parametrize(
    "change,error,words",
    [
        (lambda p: p.pop("D"), KeyError, "'D'"),
        (lambda p: p.update(B=p["B"][:, :, :1]), ValueError, "params['B']"),
        (lambda p: p.update(C=p["C"][:2]), ValueError, "params['C']"),
        (lambda p: p.update(Lambda_im=p["Lambda_im"][:3]), ValueError, "params['Lambda_im']"),
        (lambda p: p.update(extra=np.zeros(2)), KeyError, "extra"),
        (lambda p: p.update(D=p["D"] * np.nan), ValueError, "params['D']"),
        (lambda p: p.update(C1=p["C"], C2=p["C"]), ValueError, "bidirectional=True"),
    ],
)
def test_bad_params_name_the_key(change, error, words):
    params = official_layout(np.random.default_rng(2), 3, 4)
    change(params)
    with pytest.raises(error) as info:
        from_official(params)
    assert words in str(info.value)


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def official_classifier(variables, x, activation, prenorm, pooling, ssm_options):
    """The official ClassificationModel (eval mode) on one sequence x (L, D), NumPy float64."""
    params, stats = variables["params"], variables.get("batch_stats", {})
    stack = params["encoder"]
    h = x @ stack["encoder"]["kernel"] + stack["encoder"]["bias"]
    i = 0
    while f"layers_{i}" in stack:
        layer = stack[f"layers_{i}"]

        def norm(v):
            scale, bias = layer["norm"]["scale"], layer["norm"]["bias"]
            if "encoder" in stats:  # BatchNorm with running statistics
                s = stats["encoder"][f"layers_{i}"]["norm"]
                return (v - s["mean"]) / np.sqrt(s["var"] + 1e-5) * scale + bias
            mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
            return (v - mu) / np.sqrt(var + 1e-6) * scale + bias

        def dense(name, v):
            return v @ layer[name]["kernel"] + layer[name]["bias"]

        skip = h
        v = norm(h) if prenorm else h
        v = official_forward(layer["seq"], v, **ssm_options)
        if activation == "full_glu":
            g = _gelu_tanh(v)
            v = dense("out1", g) * _sigmoid(dense("out2", g))
        elif activation == "half_glu1":
            g = _gelu_tanh(v)
            v = g * _sigmoid(dense("out2", g))
        elif activation == "half_glu2":
            v = v * _sigmoid(dense("out2", _gelu_tanh(v)))
        else:
            v = _gelu_tanh(v)
        h = skip + v
        if not prenorm:
            h = norm(h)
        i += 1
    pooled = h.mean(0) if pooling == "mean" else h[-1]
    return pooled @ params["decoder"]["kernel"] + params["decoder"]["bias"]


@pytest.mark.parametrize(
    "activation,prenorm,batchnorm,pooling",
    [("half_glu1", True, True, "mean"), ("full_glu", False, False, "last"),
     ("half_glu2", True, False, "mean"), ("gelu", False, True, "last")],
)  # fmt: skip
def test_whole_official_model(activation, prenorm, batchnorm, pooling):
    from s5ssm.convert import from_official_model

    rng = np.random.default_rng(3)
    D, H, P, n_out = 4, 5, 3, 7
    dense = lambda i, o: {"kernel": rng.normal(0, 0.4, (i, o)), "bias": rng.normal(0, 0.1, o)}  # noqa: E731
    stack, stats = {"encoder": dense(D, H)}, {}
    for i in range(2):
        layer = {"seq": official_layout(rng, H, P), "norm": {"scale": rng.uniform(0.5, 1.5, H), "bias": rng.normal(0, 0.1, H)}}
        if activation == "full_glu":
            layer["out1"] = dense(H, H)
        if activation != "gelu":
            layer["out2"] = dense(H, H)
        stack[f"layers_{i}"] = layer
        stats[f"layers_{i}"] = {"norm": {"mean": rng.normal(0, 0.3, H), "var": rng.uniform(0.5, 2.0, H)}}
    variables = {"params": {"encoder": stack, "decoder": dense(H, n_out)}}
    if batchnorm:
        variables["batch_stats"] = {"encoder": stats}
    ssm_options = dict(conj_sym=True, bidirectional=False, discretization="zoh", clip_eigs=False, step_rescale=1.0)
    x = rng.normal(size=(2, 9, D))
    expected = np.stack([official_classifier(variables, seq, activation, prenorm, pooling, ssm_options) for seq in x])

    model = from_official_model(variables, activation=activation, prenorm=prenorm, pooling=pooling, dtype=torch.float64)
    got = model(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert model.layers[0].norm.__class__.__name__ == ("SequenceBatchNorm" if batchnorm else "LayerNorm")
