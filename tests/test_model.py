"""S5Model: the headline configuration, pooling, tokens, the conv encoder, param_count, step == forward on
prefixes, files."""

import itertools
import math

import pytest
import torch

from s5ssm import S5Model, recommended_defaults
from s5ssm.encoders import CHUNK, ConvEncoder


def small(seed=0, **kw):
    torch.manual_seed(seed)
    opts = dict(embed_dim=3, hidden_size=8, state_size=8, num_layers=2, norm="layer")
    opts.update(kw)
    model = S5Model(**opts).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.ssm.log_step.add_(2.0)
    return model


def test_headline_configuration():
    torch.manual_seed(0)
    model = S5Model(embed_dim=287, hidden_size=256, state_size=64, num_layers=4, dropout=0.1, window_size=60)
    model.eval()
    x = torch.randn(2, 60, 287)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 256) and model.output_size == 256
        model.pooling = "none"
        every = model(x)
    assert every.shape == (2, 60, 256)
    torch.testing.assert_close(y, every[:, -1])
    with torch.no_grad():
        model.pooling = "last"
        assert model(x[:, :17]).shape == (2, 256)  # shorter than the window is fine
    with pytest.raises(ValueError, match="window_size=60") as err:
        model(torch.randn(1, 61, 287))
    assert "61" in str(err.value)
    model.train()
    assert model(x[:, :5]).shape == (2, 256)


def test_tokens_equal_one_hot_linear():
    tok = small(vocab_size=11, embed_dim=None, pooling="none").eval()
    lin = small(embed_dim=11, pooling="none").eval()
    state = tok.state_dict()
    state["encoder.weight"] = tok.encoder.weight.detach().T.clone()
    state["encoder.bias"] = torch.zeros(tok.hidden_size, dtype=torch.float64)
    lin.load_state_dict(state)
    x = torch.randint(0, 11, (3, 6))
    one_hot = torch.nn.functional.one_hot(x, 11).double()
    torch.testing.assert_close(tok(x), lin(one_hot), rtol=1e-12, atol=1e-12)
    assert tok(x.int()).shape == (3, 6, 8)


@pytest.mark.parametrize("pooling", ["last", "mean", "none"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_pooling_mask_aware(pooling, bidirectional):
    model = small(1, pooling=pooling, bidirectional=bidirectional, output_dim=2).eval()
    lengths = [6, 2, 4]
    x = torch.randn(3, 6, 3, dtype=torch.float64)
    right = torch.arange(6)[None] < torch.tensor(lengths)[:, None]
    gaps = torch.tensor([[1, 0, 1, 1, 0, 1], [0, 1, 1, 0, 0, 0], [1, 1, 0, 0, 1, 0]], dtype=torch.bool)
    for mask in (right, gaps):
        y = model(x.masked_fill(~mask[..., None], 7.0), mask=mask)
        for b in range(3):
            keep = mask[b].nonzero()[:, 0]
            alone = model(x[b : b + 1, keep])
            if pooling == "none":
                torch.testing.assert_close(y[b, keep], alone[0], rtol=1e-10, atol=1e-10)
            else:
                torch.testing.assert_close(y[b], alone[0], rtol=1e-10, atol=1e-10)
    # and the pooled value is what the name says
    model.pooling = "none"
    every = model(x)
    model.pooling = pooling
    if pooling == "mean":
        hidden = small(1, pooling="none", bidirectional=bidirectional).eval()
        hidden.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("head")})
        h = hidden(x)
        torch.testing.assert_close(model(x), model.head(h.mean(1)), rtol=1e-12, atol=1e-12)
    elif pooling == "last":
        torch.testing.assert_close(model(x), every[:, -1], rtol=1e-12, atol=1e-12)


def test_output_size_and_head():
    assert small().output_size == 8
    model = small(output_dim=5, pooling="none")
    assert model.output_size == 5
    assert model(torch.randn(2, 4, 3, dtype=torch.float64)).shape == (2, 4, 5)
    assert small(output_dim=1)(torch.randn(2, 4, 3, dtype=torch.float64)).shape == (2, 1)


def expected_param_count(embed_dim=None, vocab_size=None, hidden_size=128, state_size=256, num_layers=6,
                         output_dim=None, norm="batch", activation="half_glu1", conj_sym=True,
                         bidirectional=False, C_init="trunc_standard_normal", encoder="linear", image_shape=None,
                         **_):  # fmt: skip
    H = hidden_size
    P = state_size // 2 if conj_sym else state_size
    if encoder == "conv":  # conv 5x5 1->12, conv 3x3 12->12, Linear(12 h2 w2, 30), Linear(30, H)
        h, w = image_shape or (math.isqrt(embed_dim),) * 2
        h2, w2 = math.ceil(h // 2 / 2) // 2, math.ceil(w // 2 / 2) // 2
        encoder = (25 * 12 + 12) + (9 * 12 * 12 + 12) + (12 * h2 * w2 * 30 + 30) + (30 * H + H)
    else:
        encoder = vocab_size * H if vocab_size is not None else embed_dim * H + H
    ssm = (
        P  # Lambda_re
        + P  # Lambda_im
        + P * H * 2  # B~ (real, imag)
        + (2 if bidirectional else 1) * H * P * 2  # C~ (C1, C2 or the wide C)
        + H  # D
        + P  # log_step
    )
    norm_params = {"batch": 2 * H, "layer": 2 * H, "rms": H}[norm]
    mix = {"gelu": 0, "half_glu1": H * H + H, "half_glu2": H * H + H, "full_glu": 2 * (H * H + H)}[activation]
    head = 0 if output_dim is None else H * output_dim + output_dim
    return encoder + num_layers * (norm_params + ssm + mix) + head


@pytest.mark.parametrize(
    "kw",
    [
        dict(embed_dim=287, hidden_size=256, state_size=64, num_layers=4, dropout=0.1, window_size=60),
        dict(embed_dim=5, hidden_size=12, state_size=8, num_layers=3, output_dim=7, norm="rms", activation="gelu"),
        dict(vocab_size=20, hidden_size=6, state_size=12, num_layers=2, blocks=3, activation="full_glu",
             conj_sym=False, bidirectional=True),
        dict(embed_dim=2, hidden_size=4, state_size=4, num_layers=1, bidirectional=True, C_init="complex_normal",
             norm="layer", activation="half_glu2", output_dim=3),
        dict(embed_dim=576, encoder="conv", hidden_size=30, state_size=16, blocks=8, num_layers=4, norm="layer",
             activation="half_glu2", output_dim=2),  # the pendulum task's model
        dict(embed_dim=270, encoder="conv", image_shape=(15, 18), hidden_size=6, state_size=4, num_layers=1),
    ],
)
def test_param_count(kw):
    model = S5Model(**kw)
    assert model.param_count() == expected_param_count(**kw)


def test_pendulum_param_count_number():
    # conv 25·12+12 = 312, conv 9·12·12+12 = 1308, Linear(108, 30) 3270, Linear(30, 30) 930: 5820;
    # per layer: LayerNorm 60, SSM (P = 8 kept) 8+8 + 8·30·2 + 30·8·2 + 30 + 8 = 1014, half_glu2 930; head 62
    model = S5Model(embed_dim=576, encoder="conv", hidden_size=30, state_size=16, blocks=8, num_layers=4,
                    norm="layer", activation="half_glu2", output_dim=2)  # fmt: skip
    assert model.param_count() == 5820 + 4 * (60 + 1014 + 930) + 62 == 13898


def test_headline_param_count_number():
    # encoder 287·256+256 = 73728; per layer: BatchNorm 2·256 = 512, SSM (P = 32 kept)
    # 32+32 + 32·256·2 + 256·32·2 + 256 + 32 = 33120, half_glu1 out2 256·256+256 = 65792
    model = S5Model(embed_dim=287, hidden_size=256, state_size=64, num_layers=4, dropout=0.1, window_size=60)
    assert model.param_count() == 73728 + 4 * (512 + 33120 + 65792) == 471424


def test_recommended_defaults_build_and_run():
    opts = recommended_defaults()
    model = S5Model(embed_dim=6, output_dim=3, **opts)
    assert model.param_count() == expected_param_count(embed_dim=6, output_dim=3, **opts)
    assert model(torch.randn(2, 10, 6)).shape == (2, 3)
    assert all(layer.ssm.clip_eigs for layer in model.layers)


@pytest.mark.parametrize("pooling,head,norm", list(itertools.product(["last", "mean", "none"], [None, 2], ["layer", "batch"])))
def test_step_equals_forward_on_every_prefix(pooling, head, norm):
    model = small(2, pooling=pooling, output_dim=head, norm=norm, activation="full_glu", blocks=2,
                  num_layers=3, dropout=0.2).eval()  # fmt: skip
    if norm == "batch":
        with torch.no_grad():
            for layer in model.layers:
                layer.norm.running_mean.normal_(0, 0.5)
                layer.norm.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    cache = model.init_cache(2)
    with torch.no_grad():
        for t in range(7):
            y, new = model.step(x[:, t], cache)
            assert new is not cache and cache["count"] == t  # the old cache is not modified
            cache = new
            full = model(x[:, : t + 1])
            want = full[:, -1] if pooling == "none" else full
            torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"t={t}: {m}")


def conv_model(seed=0, **kw):
    """A model whose conv encoder reads 6×8 images (embed_dim 48)."""
    return small(seed, embed_dim=48, encoder="conv", image_shape=(6, 8), **kw)


def test_conv_encoder_reads_every_frame_as_an_image_on_its_own():
    encoder = conv_model(7).encoder
    x = torch.randn(3, 150, 48, dtype=torch.float64)  # 450 frames: more than one chunk
    assert 450 > CHUNK
    with torch.no_grad():
        h = encoder(x)
        assert h.shape == (3, 150, 8) and encoder(x[:, 0]).shape == (3, 8)
        # row-major (6, 8) images, all frames through the CNN at once: the same as chunk by chunk
        torch.testing.assert_close(h, encoder.net(x.reshape(450, 1, 6, 8)).reshape(3, 150, 8), rtol=0, atol=0)
        torch.testing.assert_close(h[1, 17], encoder(x[1, 17][None])[0], rtol=1e-12, atol=1e-12)
        assert not torch.allclose(encoder(x.flip(-1)), h)  # the pixel layout matters
    square = small(embed_dim=64, encoder="conv")
    assert square.encoder.image_shape == (8, 8) and square.config["image_shape"] is None
    for side in range(6, 30):  # the size of the flattened feature maps is computed right
        assert ConvEncoder((side, side + 3), 4)(torch.rand(2, side * (side + 3))).shape == (2, 4)


@pytest.mark.parametrize("pooling", ["none", "mean"])
def test_conv_model_step_equals_forward_with_irregular_steps(pooling):
    """The pendulum's use: per-frame images at irregular times, streamed one frame at a time."""
    model = conv_model(8, pooling=pooling, output_dim=2).eval()
    x = torch.rand(2, 6, 48, dtype=torch.float64)
    gaps = torch.tensor([[1.0, 2, 1, 3, 1, 1], [1.0, 1, 4, 2, 2, 1]], dtype=torch.float64)
    cache = model.init_cache(2)
    with torch.no_grad():
        for t in range(6):
            y, cache = model.step(x[:, t], cache, step_scale=gaps[:, t])
            full = model(x[:, : t + 1], step_scale=gaps[:, : t + 1])
            want = full[:, -1] if pooling == "none" else full
            torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10, msg=lambda m: f"t={t}: {m}")


def test_token_model_step():
    model = small(3, vocab_size=9, embed_dim=None, pooling="mean").eval()
    x = torch.randint(0, 9, (2, 5))
    cache = model.init_cache(2)
    for t in range(5):
        y, cache = model.step(x[:, t], cache)
    torch.testing.assert_close(y, model(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kw", [dict(), dict(vocab_size=7, embed_dim=None, output_dim=3, norm="batch", pooling="mean",
                                              bidirectional=True, conj_sym=False, window_size=9),
                                dict(embed_dim=48, encoder="conv", image_shape=[6, 8], output_dim=2, pooling="none")])  # fmt: skip
def test_save_and_load(tmp_path, kw):
    model = small(4, **kw).eval()
    x = torch.randint(0, 7, (2, 6)) if "vocab_size" in kw else torch.randn(2, 6, model.embed_dim, dtype=torch.float64)
    if "norm" in kw:  # buffers round-trip too
        with torch.no_grad():
            model.layers[0].norm.running_mean.fill_(0.3)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = S5Model.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    if "image_shape" in kw:  # given as a list, kept as a tuple, written to JSON as a list
        assert loaded.config["image_shape"] == (6, 8) and loaded.encoder.image_shape == (6, 8)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        S5Model.from_pretrained(tmp_path / "nothing")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_resets_equal_separate_episodes(bidirectional):
    """Every layer's state is cleared at an episode start: the model sees each episode alone."""
    model = small(5, pooling="none", output_dim=2, bidirectional=bidirectional, num_layers=3).eval()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[0, [3, 4]] = True
    resets[1, 7] = True
    y = model(x, resets=resets)
    for b, bounds in ((0, [0, 3, 4, 9]), (1, [0, 7, 9])):
        pieces = [model(x[b : b + 1, s:e]) for s, e in zip(bounds[:-1], bounds[1:])]
        torch.testing.assert_close(y[b : b + 1], torch.cat(pieces, 1), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y, model(x))


def test_step_with_float_step_scale_equals_forward_on_every_prefix():
    model = small(6, pooling="mean", output_dim=3).eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    cache = model.init_cache(2)
    with torch.no_grad():
        for t in range(5):
            y, cache = model.step(x[:, t], cache, step_scale=0.6)
            torch.testing.assert_close(y, model(x[:, : t + 1], step_scale=0.6), rtol=1e-10, atol=1e-10)
        assert not torch.allclose(y, model(x))  # the step scale matters
