"""Bad input: every public entry point raises ValueError/TypeError naming the argument and, for
shapes and dtypes, the expected and received shape or dtype."""

import pytest
import torch

from s5ssm import S5Block, S5Model, S5SSM, linear_scan

NAN = float("nan")
INF = float("inf")
f64, c128 = torch.float64, torch.complex128


def check(exc, fn, *words):
    with pytest.raises(exc) as err:
        fn()
    msg = str(err.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


# ---------------------------------------------------------------- linear_scan
def scan_args(B=2, L=4, P=3):
    return torch.full((P,), 0.5 + 0j, dtype=c128), torch.ones(B, L, P, dtype=c128)


SCAN_CASES = {
    "bu not a tensor": (TypeError, lambda lam, bu: linear_scan(lam, bu.tolist()), ["bu", "torch.Tensor", "list"]),
    "bu real": (TypeError, lambda lam, bu: linear_scan(lam, bu.real), ["bu", "complex64 or complex128", "float64"]),
    "bu rank": (ValueError, lambda lam, bu: linear_scan(lam, bu[0]), ["bu", "[B, L, P]", "[4, 3]"]),
    "lambda dtype": (TypeError, lambda lam, bu: linear_scan(lam.to(torch.complex64), bu),
                     ["lambda_bar", "complex128", "complex64"]),
    "lambda real": (TypeError, lambda lam, bu: linear_scan(lam.real, bu), ["lambda_bar", "float64"]),
    "lambda P": (ValueError, lambda lam, bu: linear_scan(torch.cat([lam, lam]), bu), ["lambda_bar", "[P=3]", "[6]"]),
    "lambda B": (ValueError, lambda lam, bu: linear_scan(lam.expand(3, 1, 3), bu), ["lambda_bar", "B=2", "[3, 1, 3]"]),
    "lambda L": (ValueError, lambda lam, bu: linear_scan(lam.expand(2, 3, 3), bu), ["lambda_bar", "L=4", "[2, 3, 3]"]),
    "lambda rank": (ValueError, lambda lam, bu: linear_scan(lam.expand(4, 3), bu), ["lambda_bar", "[4, 3]"]),
    "state shape": (ValueError, lambda lam, bu: linear_scan(lam, bu, initial_state=bu[:, 0, :2]),
                    ["initial_state", "[B=2, P=3]", "[2, 2]"]),
    "state dtype": (TypeError, lambda lam, bu: linear_scan(lam, bu, initial_state=bu[:, 0].real),
                    ["initial_state", "complex128", "float64"]),
    "resets dtype": (TypeError, lambda lam, bu: linear_scan(lam, bu, resets=torch.zeros(2, 4)),
                     ["resets", "bool", "float32"]),
    "resets shape": (ValueError, lambda lam, bu: linear_scan(lam, bu, resets=torch.zeros(2, 5, dtype=torch.bool)),
                     ["resets", "[B=2, L=4]", "[2, 5]"]),
    "backend": (ValueError, lambda lam, bu: linear_scan(lam, bu, backend="fast"), ["backend", "'fast'"]),
}


@pytest.mark.parametrize("case", list(SCAN_CASES))
def test_linear_scan_errors(case):
    exc, fn, words = SCAN_CASES[case]
    lam, bu = scan_args()
    check(exc, lambda: fn(lam, bu), *words)


# ---------------------------------------------------------------- S5SSM
def layer64(**kw):
    torch.manual_seed(0)
    return S5SSM(3, 4, **kw).double()


U = lambda B=2, L=5: torch.randn(B, L, 3, dtype=f64)  # noqa: E731
MASK = torch.ones(2, 5, dtype=torch.bool)

FORWARD_CASES = {
    "u not a tensor": (TypeError, dict(u=[[1.0]]), ["u", "torch.Tensor"]),
    "u rank": (ValueError, dict(u=torch.randn(5, 3, dtype=f64)), ["u", "[B, L, H=3]", "[5, 3]"]),
    "u features": (ValueError, dict(u=torch.randn(2, 5, 4, dtype=f64)), ["u", "[B, L, H=3]", "[2, 5, 4]"]),
    "u dtype": (TypeError, dict(u=torch.randn(2, 5, 3)), ["u", "float64", "float32"]),
    "u int": (TypeError, dict(u=torch.ones(2, 5, 3, dtype=torch.int64)), ["u", "float64", "int64"]),
    "u empty": (ValueError, dict(u=torch.randn(2, 0, 3, dtype=f64)), ["u", "length >= 1", "[2, 0, 3]"]),
    "u NaN": (ValueError, dict(u=U().index_put_((torch.tensor([1]), torch.tensor([2])), torch.tensor(NAN, dtype=f64))),
              ["u", "NaN"]),
    "u Inf": (ValueError, dict(u=U().clamp(max=0).index_fill_(1, torch.tensor([4]), INF)), ["u", "Inf"]),
    "mask shape": (ValueError, dict(mask=torch.ones(2, 4, dtype=torch.bool)), ["mask", "[B=2, L=5]", "[2, 4]"]),
    "mask dtype": (TypeError, dict(mask=torch.ones(2, 5)), ["mask", "bool", "float32"]),
    "mask not a tensor": (TypeError, dict(mask=[[True] * 5] * 2), ["mask", "torch.Tensor"]),
    "resets shape": (ValueError, dict(resets=torch.zeros(5, 2, dtype=torch.bool)), ["resets", "[B=2, L=5]", "[5, 2]"]),
    "resets dtype": (TypeError, dict(resets=torch.zeros(2, 5, dtype=torch.int64)), ["resets", "bool", "int64"]),
    "step_scale [B+1]": (ValueError, dict(step_scale=torch.ones(3, dtype=f64)), ["step_scale", "[B=2]", "[3]"]),
    "step_scale [B, L+1]": (ValueError, dict(step_scale=torch.ones(2, 6, dtype=f64)),
                            ["step_scale", "[B=2, L=5]", "[2, 6]"]),
    "step_scale rank 3": (ValueError, dict(step_scale=torch.ones(2, 5, 1, dtype=f64)),
                          ["step_scale", "[B=2, L=5]", "[2, 5, 1]"]),
    "step_scale 0-dim": (ValueError, dict(step_scale=torch.tensor(1.0, dtype=f64)), ["step_scale", "got []"]),
    "step_scale int dtype": (TypeError, dict(step_scale=torch.ones(2, dtype=torch.int64)),
                             ["step_scale", "float32 or float64", "int64"]),
    "step_scale complex": (TypeError, dict(step_scale=torch.ones(2, dtype=c128)), ["step_scale", "complex128"]),
    "step_scale str": (TypeError, dict(step_scale="1.0"), ["step_scale", "str"]),
    "step_scale bool": (TypeError, dict(step_scale=True), ["step_scale", "bool"]),
    "step_scale 0": (ValueError, dict(step_scale=0.0), ["step_scale", "positive"]),
    "step_scale negative": (ValueError, dict(step_scale=-1), ["step_scale", "positive", "-1"]),
    "step_scale NaN": (ValueError, dict(step_scale=NAN), ["step_scale", "nan"]),
    "step_scale inf": (ValueError, dict(step_scale=INF), ["step_scale", "inf"]),
    "step_scale tensor 0": (ValueError, dict(step_scale=torch.tensor([1.0, 0.0], dtype=f64)), ["step_scale", "positive"]),
    "step_scale tensor NaN": (ValueError, dict(step_scale=torch.ones(2, 5, dtype=f64).index_fill_(1, torch.tensor([3]), NAN)),
                              ["step_scale", "finite"]),
    "step_scale NaN at valid step": (ValueError, dict(mask=MASK.clone().index_fill_(1, torch.tensor([4]), False),
                                                      step_scale=torch.ones(2, 5, dtype=f64).index_fill_(1, torch.tensor([3]), NAN)),
                                     ["step_scale", "valid"]),
    "state shape": (ValueError, dict(state=torch.zeros(2, 3, dtype=c128)), ["state", "[B=2, P=2]", "[2, 3]"]),
    "state dtype": (TypeError, dict(state=torch.zeros(2, 2, dtype=torch.complex64)), ["state", "complex128", "complex64"]),
    "state real": (TypeError, dict(state=torch.zeros(2, 2, dtype=f64)), ["state", "complex128", "float64"]),
    "state NaN": (ValueError, dict(state=torch.full((2, 2), complex(0, NAN), dtype=c128)), ["state", "NaN"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FORWARD_CASES))
def test_ssm_forward_errors(case):
    exc, kw, words = FORWARD_CASES[case]
    layer = layer64()
    u = kw.pop("u", U())
    check(exc, lambda: layer(u, **kw), *words)
    kw["u"] = u  # the dict is shared between runs


def test_masked_step_scale_values_are_not_checked():
    layer = layer64()
    mask = MASK.clone()
    mask[0, 3:] = False
    scale = torch.ones(2, 5, dtype=f64)
    scale[0, 3:] = NAN
    assert torch.isfinite(layer(U(), mask=mask, step_scale=scale)).all()


def test_bidirectional_has_no_state():
    layer = layer64(bidirectional=True)
    check(ValueError, lambda: layer(U(), return_state=True), "return_state", "bidirectional")
    check(ValueError, lambda: layer(U(), state=torch.zeros(2, 2, dtype=c128)), "state", "bidirectional")
    check(ValueError, lambda: layer.step(torch.randn(2, 3, dtype=f64)), "step", "bidirectional")
    block = S5Block(3, 4, norm="layer", bidirectional=True).double().eval()
    check(ValueError, lambda: block.step(torch.randn(2, 3, dtype=f64)), "step", "bidirectional")


STEP_CASES = {
    "u_k rank": (ValueError, dict(u_k=torch.randn(2, 1, 3, dtype=f64)), ["u_k", "[B, H=3]", "[2, 1, 3]"]),
    "u_k features": (ValueError, dict(u_k=torch.randn(2, 4, dtype=f64)), ["u_k", "[B, H=3]", "[2, 4]"]),
    "u_k dtype": (TypeError, dict(u_k=torch.randn(2, 3)), ["u_k", "float64", "float32"]),
    "u_k NaN": (ValueError, dict(u_k=torch.full((2, 3), NAN, dtype=f64)), ["u_k", "NaN"]),
    "state batch": (ValueError, dict(state=torch.zeros(3, 2, dtype=c128)), ["state", "[B=2, P=2]", "[3, 2]"]),
    "state dtype": (TypeError, dict(state=torch.zeros(2, 2, dtype=torch.complex64)), ["state", "complex128"]),
    "state Inf": (ValueError, dict(state=torch.full((2, 2), INF, dtype=c128)), ["state", "Inf"]),
    "step_scale [B, L]": (ValueError, dict(step_scale=torch.ones(2, 5, dtype=f64)), ["step_scale", "[B=2]", "[2, 5]"]),
    "step_scale negative": (ValueError, dict(step_scale=torch.tensor([1.0, -1.0], dtype=f64)), ["step_scale", "positive"]),
    "step_scale 0": (ValueError, dict(step_scale=0), ["step_scale", "positive"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_ssm_step_errors(case):
    exc, kw, words = STEP_CASES[case]
    kw = dict(kw)
    u_k = kw.pop("u_k", torch.randn(2, 3, dtype=f64))
    check(exc, lambda: layer64().step(u_k, **kw), *words)


CONSTRUCTOR_CASES = {
    "blocks divide": (lambda: S5SSM(3, 6, 4), ["state_size", "6", "blocks", "4"]),
    "blocks zero": (lambda: S5SSM(3, 6, 0), ["blocks"]),
    "odd block conj_sym": (lambda: S5SSM(3, 6, 2), ["conj_sym", "even", "6/2 = 3"]),
    "odd state conj_sym": (lambda: S5SSM(3, 5), ["conj_sym", "5/1 = 5"]),
    "discretization": (lambda: S5SSM(3, 4, discretization="euler"), ["discretization", "'euler'", "zoh"]),
    "C_init": (lambda: S5SSM(3, 4, C_init="xavier"), ["C_init", "'xavier'", "lecun_normal"]),
    "dt_min > dt_max": (lambda: S5SSM(3, 4, dt_min=0.1, dt_max=0.01), ["dt_min=0.1", "dt_max=0.01"]),
    "dt_min <= 0": (lambda: S5SSM(3, 4, dt_min=0.0), ["dt_min=0.0"]),
    "step_rescale": (lambda: S5SSM(3, 4, step_rescale=0.0), ["step_rescale", "0.0"]),
    "hidden_size": (lambda: S5SSM(0, 4), ["hidden_size"]),
    "scan_backend": (lambda: S5SSM(3, 4, scan_backend="gpu")(torch.randn(1, 2, 3)), ["backend", "'gpu'"]),
    "norm": (lambda: S5Block(3, 4, norm="group"), ["norm", "'group'", "batch"]),
    "activation": (lambda: S5Block(3, 4, activation="relu"), ["activation", "'relu'", "half_glu1"]),
    "dropout": (lambda: S5Block(3, 4, dropout=1.0), ["dropout", "1.0"]),
    "pooling": (lambda: S5Model(embed_dim=2, pooling="max"), ["pooling", "'max'", "mean"]),
    "embed_dim and vocab_size": (lambda: S5Model(embed_dim=2, vocab_size=5), ["embed_dim", "vocab_size"]),
    "neither embed_dim nor vocab_size": (lambda: S5Model(), ["embed_dim", "vocab_size"]),
    "num_layers": (lambda: S5Model(embed_dim=2, num_layers=0), ["num_layers", "0"]),
    "window_size": (lambda: S5Model(embed_dim=2, window_size=0), ["window_size", "0"]),
    "model conj_sym odd block": (lambda: S5Model(embed_dim=2, state_size=12, blocks=4), ["conj_sym", "12/4 = 3"]),
    "model unknown norm": (lambda: S5Model(embed_dim=2, norm="instance"), ["norm", "'instance'"]),
    "encoder": (lambda: S5Model(embed_dim=4, encoder="cnn"), ["encoder", "'cnn'", "conv"]),
    "conv encoder on tokens": (lambda: S5Model(vocab_size=9, encoder="conv"), ["encoder='conv'", "vocab_size"]),
    "image_shape without conv": (lambda: S5Model(embed_dim=4, image_shape=(2, 2)), ["image_shape", "encoder='conv'"]),
    "conv not square": (lambda: S5Model(embed_dim=575, encoder="conv"), ["embed_dim=575", "square", "image_shape"]),
    "image_shape pixels": (lambda: S5Model(embed_dim=576, encoder="conv", image_shape=(24, 20)),
                           ["image_shape=(24, 20)", "480 pixels", "embed_dim=576"]),
    "image_shape form": (lambda: S5Model(embed_dim=576, encoder="conv", image_shape="24x24"),
                         ["image_shape", "(height, width)", "'24x24'"]),
    "image_shape floats": (lambda: S5Model(embed_dim=576, encoder="conv", image_shape=(24.0, 24.0)),
                           ["image_shape", "(height, width)"]),
    "image too small": (lambda: S5Model(embed_dim=25, encoder="conv"), ["image_shape=(5, 5)", "6×6"]),
}


@pytest.mark.parametrize("case", list(CONSTRUCTOR_CASES))
def test_constructor_errors(case):
    fn, words = CONSTRUCTOR_CASES[case]
    check(ValueError, fn, *words)


# ---------------------------------------------------------------- S5Block / S5Model forward
def test_block_forward_errors():
    block = S5Block(3, 4, norm="layer").double()
    check(ValueError, lambda: block(torch.randn(2, 5, 4, dtype=f64)), "x", "[B, L, H=3]", "[2, 5, 4]")
    check(TypeError, lambda: block(torch.randn(2, 5, 3)), "x", "float64", "float32")
    bn = S5Block(3, 4, norm="batch").double().train()
    check(ValueError, lambda: bn(U(), mask=torch.ones(2, 6, dtype=torch.bool)), "mask", "[B=2, L=5]", "[2, 6]")
    check(TypeError, lambda: bn(U(), mask=torch.ones(2, 5)), "mask", "bool", "float32")
    check(ValueError, lambda: block(U(), mask=torch.ones(2, 6, dtype=torch.bool)), "mask", "[B=2, L=5]", "[2, 6]")
    check(TypeError, lambda: block(U(), mask=torch.ones(2, 5, dtype=torch.int64)), "mask", "bool", "int64")
    check(ValueError, lambda: block(U(), step_scale=-2.0), "step_scale")
    check(ValueError, lambda: block.step(torch.randn(2, 3, dtype=f64), torch.zeros(2, 5, dtype=c128)),
          "state", "[B=2, P=2]", "[2, 5]")  # fmt: skip


def model64(**kw):
    opts = dict(embed_dim=3, hidden_size=4, state_size=4, num_layers=2, norm="layer")
    opts.update(kw)
    return S5Model(**opts).double().eval()


MODEL_CASES = {
    "x rank": (ValueError, {}, torch.randn(2, 3, dtype=f64), ["x", "[B, L, D=3]", "[2, 3]"]),
    "x features": (ValueError, {}, torch.randn(2, 5, 4, dtype=f64), ["x", "[B, L, D=3]", "[2, 5, 4]"]),
    "x dtype": (TypeError, {}, torch.randn(2, 5, 3), ["x", "float64", "float32"]),
    "x NaN": (ValueError, {}, torch.full((2, 5, 3), NAN, dtype=f64), ["x", "NaN"]),
    "x not a tensor": (TypeError, {}, [[0.0]], ["x", "torch.Tensor"]),
    "window": (ValueError, dict(window_size=4), torch.randn(2, 5, 3, dtype=f64), ["window_size=4", "5"]),
    "tokens float": (TypeError, dict(vocab_size=7, embed_dim=None), torch.zeros(2, 5), ["x", "int64", "float32"]),
    "tokens rank": (ValueError, dict(vocab_size=7, embed_dim=None), torch.zeros(2, 5, 1, dtype=torch.int64),
                    ["x", "[B, L]", "[2, 5, 1]"]),
    "tokens range": (ValueError, dict(vocab_size=7, embed_dim=None), torch.full((2, 5), 7), ["x", "[0, 7)", "7"]),
    "tokens negative": (ValueError, dict(vocab_size=7, embed_dim=None), torch.full((2, 5), -1), ["x", "-1"]),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_model_forward_errors(case):
    exc, kw, x, words = MODEL_CASES[case]
    check(exc, lambda: model64(**kw)(x), *words)


def test_model_forward_argument_errors():
    model = model64()
    x = U()
    check(ValueError, lambda: model(x, mask=torch.ones(2, 4, dtype=torch.bool)), "mask", "[B=2, L=5]", "[2, 4]")
    check(TypeError, lambda: model(x, mask=torch.ones(2, 5)), "mask", "bool")
    check(ValueError, lambda: model(x, resets=torch.ones(1, 5, dtype=torch.bool)), "resets", "[B=2, L=5]", "[1, 5]")
    check(ValueError, lambda: model(x, step_scale=torch.ones(2, 4, dtype=f64)), "step_scale", "[B=2, L=5]", "[2, 4]")
    check(TypeError, lambda: model(x, step_scale=torch.ones(2, dtype=torch.int32)), "step_scale", "int32")
    check(ValueError, lambda: model(x, step_scale=NAN), "step_scale")


# ---------------------------------------------------------------- S5Model streaming
def test_model_step_errors():
    model = model64()
    cache = model.init_cache(2)
    x_t = torch.randn(2, 3, dtype=f64)
    check(ValueError, lambda: model.step(torch.randn(2, 1, 3, dtype=f64), cache), "x_t", "[B, D=3]", "[2, 1, 3]")
    check(ValueError, lambda: model.step(torch.randn(2, 4, dtype=f64), cache), "x_t", "[B, D=3]", "[2, 4]")
    check(TypeError, lambda: model.step(torch.randn(2, 3), cache), "x_t", "float64", "float32")
    check(ValueError, lambda: model.step(torch.full((2, 3), INF, dtype=f64), cache), "x_t", "Inf")
    check(TypeError, lambda: model.step(x_t, None), "cache", "init_cache")
    check(TypeError, lambda: model.step(x_t, {"states": []}), "cache", "init_cache")
    check(ValueError, lambda: model.step(x_t, model.init_cache(3)), "cache['states'][0]", "[B=2, P=2]", "[3, 2]")
    bad = dict(cache, states=cache["states"][:1])
    check(ValueError, lambda: model.step(x_t, bad), "cache", "2 layer states", "got 1")
    bad = dict(cache, states=tuple(s.to(torch.complex64) for s in cache["states"]))
    check(TypeError, lambda: model.step(x_t, bad), "cache['states'][0]", "complex128", "complex64")
    bad = dict(cache, states=[cache["states"][0], torch.full((2, 2), complex(NAN, 0), dtype=c128)])
    check(ValueError, lambda: model.step(x_t, bad), "cache['states'][1]", "NaN")
    check(TypeError, lambda: model.step(x_t, dict(cache, states="x")), "cache['states']", "str")
    check(ValueError, lambda: model.step(x_t, dict(cache, sum=torch.zeros(2, 5, dtype=f64))),
          "cache['sum']", "[B=2, H=4]", "[2, 5]")  # fmt: skip
    check(TypeError, lambda: model.step(x_t, dict(cache, sum=torch.zeros(2, 4))), "cache['sum']", "float64", "float32")
    check(ValueError, lambda: model.step(x_t, dict(cache, count=-1)), "cache['count']", "-1")
    check(TypeError, lambda: model.step(x_t, dict(cache, count="3")), "cache['count']", "'3'")
    check(ValueError, lambda: model.step(x_t, cache, step_scale=torch.ones(2, 5, dtype=f64)),
          "step_scale", "[B=2]", "[2, 5]")  # fmt: skip
    check(ValueError, lambda: model.step(x_t, cache, step_scale=-0.5), "step_scale", "positive")
    tokens = model64(vocab_size=5, embed_dim=None)
    tcache = tokens.init_cache(2)
    check(ValueError, lambda: tokens.step(torch.zeros(2, 1, dtype=torch.int64), tcache), "x_t", "[B]", "[2, 1]")
    check(ValueError, lambda: tokens.step(torch.full((2,), 5), tcache), "x_t", "[0, 5)")
    check(TypeError, lambda: tokens.step(torch.zeros(2), tcache), "x_t", "int64", "float32")
    bi = model64(bidirectional=True)
    check(ValueError, lambda: bi.init_cache(2), "init_cache", "bidirectional")
    check(ValueError, lambda: bi.step(x_t, cache), "step", "bidirectional")
    train_bn = model64(norm="batch").train()
    with pytest.raises(RuntimeError, match="eval"):
        train_bn.step(x_t, train_bn.init_cache(2))


# ---------------------------------------------------------------- names at the block level, batch sizes, scan state
def test_block_errors_name_the_block_arguments():
    """S5Block's arguments are x / x_k: its errors must not blame the inner SSM's u / u_k."""
    block = S5Block(3, 4, norm="layer").double().eval()
    for value in (NAN, INF):
        x = U()
        x[1, 2, 0] = value
        check(ValueError, lambda: block(x), "x contains NaN or Inf")
    check(ValueError, lambda: block.step(torch.randn(2, 4, dtype=f64)), "x_k", "[B, H=3]", "[2, 4]")
    check(ValueError, lambda: block.step(torch.randn(2, 1, 3, dtype=f64)), "x_k", "[B, H=3]", "[2, 1, 3]")
    check(TypeError, lambda: block.step(torch.randn(2, 3)), "x_k", "float64", "float32")
    check(ValueError, lambda: block.step(torch.full((2, 3), INF, dtype=f64)), "x_k", "Inf")
    check(ValueError, lambda: block.step(torch.randn(2, 3, dtype=f64), step_scale=torch.ones(3, dtype=f64)),
          "step_scale", "[B=2]", "[3]")  # fmt: skip
    check(TypeError, lambda: block(U(), resets=torch.zeros(2, 5)), "resets", "bool", "float32")
    check(ValueError, lambda: block(U(), step_scale=torch.ones(2, 4, dtype=f64)), "step_scale", "[B=2, L=5]", "[2, 4]")
    check(ValueError, lambda: block(U(), state=torch.zeros(3, 2, dtype=c128)), "state", "[B=2, P=2]", "[3, 2]")


@pytest.mark.parametrize("bad,exc,words", [(0, ValueError, ["batch_size", ">= 1", "0"]),
                                           (-2, ValueError, ["batch_size", "-2"]),
                                           (2.0, TypeError, ["batch_size", "int", "float"]),
                                           (torch.tensor(2), TypeError, ["batch_size", "Tensor"])])  # fmt: skip
def test_batch_size_errors(bad, exc, words):
    check(exc, lambda: model64().init_cache(bad), *words)
    check(exc, lambda: layer64().init_state(bad), *words)


def test_linear_scan_rejects_non_finite_initial_state():
    lam, bu = scan_args()
    for value in (complex(NAN, 0), complex(0, INF)):
        x0 = torch.zeros(2, 3, dtype=c128)
        x0[1, 2] = value
        check(ValueError, lambda: linear_scan(lam, bu, initial_state=x0), "initial_state", "NaN or Inf")


def test_model_resets_errors():
    model = model64()
    check(TypeError, lambda: model(U(), resets=torch.zeros(2, 5, dtype=torch.int64)), "resets", "bool", "int64")
    check(ValueError, lambda: model(U(), resets=torch.zeros(2, 5, 1, dtype=torch.bool)),
          "resets", "[B=2, L=5]", "[2, 5, 1]")  # fmt: skip


def test_rnn_baseline_errors_and_time_input():
    from s5ssm.baselines import RNNModel

    torch.manual_seed(0)
    x, scale = torch.randn(2, 5, 3), torch.rand(2, 5) + 0.5
    plain, timed = RNNModel("gru", 3, 8, 1, output_dim=2), RNNModel("gru", 3, 8, 1, output_dim=2, time_input=True)
    check(ValueError, lambda: plain(x, resets=torch.zeros(2, 5, dtype=torch.bool)), "resets")
    check(ValueError, lambda: plain(x, step_scale=scale), "step_scale", "time_input")
    check(ValueError, lambda: timed(x), "step_scale", "time_input=True")
    check(ValueError, lambda: timed(x, step_scale=scale[:, :4]), "step_scale", "[B=2, L=5]", "[2, 4]")
    check(ValueError, lambda: RNNModel("gru", 3, vocab_size=4), "exactly one of embed_dim")
    check(ValueError, lambda: RNNModel("gru", 4, encoder="conv"), "6×6")
    assert not torch.equal(timed(x, step_scale=scale), timed(x, step_scale=2 * scale))  # the gaps are read


# ---------------------------------------------------------------- sizes and settings from files
@pytest.mark.parametrize("value", [INF, 1e300, NAN, -1.0])
def test_step_rescale_keeps_step_sizes_finite(value):
    check(ValueError, lambda: S5SSM(3, 4, step_rescale=value), "step_rescale", str(value))
    check(ValueError, lambda: S5Model(embed_dim=2, hidden_size=4, state_size=4, step_rescale=value), "step_rescale")
    layer = layer64()
    if value > 0:
        check(ValueError, lambda: layer(U(), step_scale=value), "step_scale")


def test_last_pooling_of_a_row_without_valid_steps_is_zeros():
    torch.manual_seed(0)
    model = S5Model(embed_dim=3, hidden_size=8, state_size=4, num_layers=1, output_dim=2, norm="layer").eval()
    x = torch.randn(2, 5, 3)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    other = x.clone()
    other[1] = 7.0  # the padded values of the empty row
    out = model(x, mask=mask)
    assert torch.equal(out, model(other, mask=mask))
    assert torch.equal(out[1], model.head.bias.detach())  # the head of a zero pooled vector
    model.pooling = "mean"
    assert torch.equal(model(x, mask=mask)[1], out[1])


def test_model_names_x_at_batch_zero():
    model = S5Model(embed_dim=3, hidden_size=4, state_size=4, num_layers=1)
    check(ValueError, lambda: model(torch.randn(0, 5, 3)), "x must have at least one sequence", "[0, 5, 3]")
    check(ValueError, lambda: model(torch.randn(2, 0, 3)), "x must have", "[2, 0, 3]")


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_bn_momentum_is_a_fraction(value):
    check(ValueError, lambda: S5Block(4, 4, bn_momentum=value), "bn_momentum", "[0, 1]", str(value))


@pytest.mark.parametrize(
    "config, words",
    [
        (dict(embed_dim=2, num_layers=10**9), ["num_layers=1000000000", "parameters"]),
        (dict(embed_dim=2, hidden_size=10**6), ["hidden_size=1000000", "parameters"]),
        (dict(vocab_size=10**11), ["vocab_size=100000000000", "parameters"]),
        (dict(embed_dim=2, hidden_size=-1), ["hidden_size must be >= 1", "-1"]),
        (dict(embed_dim=2, num_layers="6"), ["num_layers must be an int"]),
        (dict(embed_dim=2, step_rescale=INF), ["step_rescale", "inf"]),
        ([1, 2], ["expected an object"]),
        (dict(embed_dim=2, colour=1), ["colour"]),
    ],
)
def test_from_pretrained_checks_sizes_before_allocating(tmp_path, config, words):
    import json
    import time

    (tmp_path / "config.json").write_text(json.dumps(config))
    start = time.perf_counter()
    with pytest.raises((TypeError, ValueError)) as err:
        S5Model.from_pretrained(tmp_path)
    assert time.perf_counter() - start < 2
    for word in [str(tmp_path / "config.json"), *words]:
        assert word in str(err.value), (word, str(err.value))


def test_npz_token_ids_beyond_any_vocabulary_are_refused(tmp_path):
    import numpy as np

    from s5ssm.data import DataFormatError, load_file

    np.savez(tmp_path / "tokens.npz", x=np.array([[1, 10**11]]), y=np.array([0]))
    with pytest.raises(DataFormatError, match=r"tokens\.npz\[x\]: sequence 0: token id 100000000000"):
        load_file(tmp_path / "tokens.npz")


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_baseline_sizes_checked_before_allocating(cell):
    from s5ssm.baselines import RNNModel

    check(ValueError, lambda: RNNModel(cell, embed_dim=3, hidden_size=10**6), "hidden_size=1000000", "parameters")
    check(ValueError, lambda: RNNModel(cell, embed_dim=3, num_layers=0), "num_layers must be >= 1")
