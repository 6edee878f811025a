"""S5Block: shapes, the paper's SequenceLayer restated, time-shared dropout, masked BatchNorm, step."""

import itertools

import pytest
import torch

from s5ssm import S5Block
from conftest import gelu_tanh, naive_ssm

NORMS = ["batch", "layer", "rms"]
ACTS = ["gelu", "full_glu", "half_glu1", "half_glu2"]


def make_block(seed=0, H=4, P=8, **kw):
    torch.manual_seed(seed)
    block = S5Block(H, P, **kw).double()
    with torch.no_grad():
        block.ssm.log_step.add_(2.0)
        for name, p in block.norm.named_parameters():  # not the identity
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if name == "weight" else 0.0))
        if hasattr(block.norm, "running_mean"):
            block.norm.running_mean.copy_(torch.randn(H) * 0.5)
            block.norm.running_var.copy_(torch.rand(H) + 0.5)
    return block


def ref_norm(block, x, norm, training):
    w = block.norm.weight.detach().double()
    if norm == "rms":
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    b = block.norm.bias.detach().double()
    if norm == "layer":
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-6) * w + b
    if training:
        flat = x.reshape(-1, x.shape[-1])
        mu, var = flat.mean(0), flat.var(0, unbiased=False)
    else:
        mu, var = block.norm.running_mean.double(), block.norm.running_var.double()
    return (x - mu) / torch.sqrt(var + 1e-5) * w + b


def ref_sequence_layer(block, x, norm, activation, prenorm, training=False):
    """lindermanlab/S5 s5/layers.py SequenceLayer.__call__ without dropout, from the parameters."""
    lin = lambda m, t: t @ m.weight.detach().double().T + m.bias.detach().double()  # noqa: E731
    skip = x
    if prenorm:
        x = ref_norm(block, x, norm, training)
    x = naive_ssm(block.ssm, x)[0]
    if activation == "gelu":
        x = gelu_tanh(x)
    elif activation == "full_glu":
        x = gelu_tanh(x)
        x = lin(block.out1, x) * torch.sigmoid(lin(block.out2, x))
    elif activation == "half_glu1":
        x = gelu_tanh(x)
        x = x * torch.sigmoid(lin(block.out2, x))
    else:
        x1 = gelu_tanh(x)
        x = x * torch.sigmoid(lin(block.out2, x1))
    x = skip + x
    if not prenorm:
        x = ref_norm(block, x, norm, training)
    return x


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm", NORMS)
def test_matches_paper_sequence_layer(prenorm, norm):
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    for i, activation in enumerate(ACTS):
        block = make_block(i, norm=norm, prenorm=prenorm, activation=activation, scan_backend="parallel")
        for training in ([False, True] if norm == "batch" else [False]):
            block.train(training)
            want = ref_sequence_layer(block, x, norm, activation, prenorm, training)
            torch.testing.assert_close(block(x), want, rtol=1e-10, atol=1e-10,
                                       msg=lambda m: f"{activation} train={training}: {m}")  # fmt: skip


@pytest.mark.parametrize("prenorm", [True, False])
def test_shapes(prenorm):
    for norm, activation in itertools.product(NORMS, ACTS):
        block = S5Block(6, 8, 2, norm=norm, prenorm=prenorm, activation=activation, dropout=0.2)
        x = torch.randn(2, 5, 6)
        for training in (True, False):
            block.train(training)
            y = block(x)
            assert y.shape == x.shape and y.dtype == torch.float32
            y, s = block(x, return_state=True)
            assert s.shape == (2, 4) and s.dtype == torch.complex64
        assert hasattr(block, "out1") == (activation == "full_glu")
        assert hasattr(block, "out2") == (activation != "gelu")


def test_dropout_mask_shared_across_time():
    torch.manual_seed(0)
    block = S5Block(16, 8, norm="layer", activation="gelu", dropout=0.5).double().train()
    x = torch.randn(4, 20, 16, dtype=torch.float64)
    z = gelu_tanh(block.ssm(block.norm(x)))  # what dropout is applied to
    ratio = (block(x) - x) / z
    kept = ratio.abs() > 1e-8
    torch.testing.assert_close(ratio[kept], torch.full_like(ratio[kept], 2.0), rtol=1e-8, atol=1e-8)
    assert torch.all(kept == kept[:, :1]), "the dropout mask changes over time"
    frac = kept[:, 0].double().mean().item()
    assert 0.25 < frac < 0.75
    assert not torch.all(kept[0, 0] == kept[1, 0]), "one mask for the whole batch"
    block.eval()
    torch.testing.assert_close(block(x) - x, gelu_tanh(block.ssm(block.norm(x))))


@pytest.mark.parametrize("prenorm", [True, False])
def test_batchnorm_statistics_ignore_masked_steps(prenorm):
    torch.manual_seed(1)
    block = S5Block(4, 8, norm="batch", prenorm=prenorm, activation="half_glu1").double().train()
    x = torch.randn(3, 9, 4, dtype=torch.float64) + 2.0
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[0, 6:] = False
    mask[2, 3:] = False
    mask[1, 1] = False  # a gap too
    outs, means, vars_ = [], [], []
    for fill in (0.0, 1e4):
        block.norm.reset_running_stats()
        y = block(x.masked_fill(~mask[..., None], fill), mask=mask)
        outs.append(y)
        means.append(block.norm.running_mean.clone())
        vars_.append(block.norm.running_var.clone())
    torch.testing.assert_close(outs[0][mask], outs[1][mask], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(means[0], means[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vars_[0], vars_[1], rtol=1e-12, atol=1e-12)
    if prenorm:  # the norm sees x itself: running stats are the valid steps' stats (momentum 0.05)
        valid = x[mask]
        torch.testing.assert_close(means[0], 0.05 * valid.mean(0), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(vars_[0], 0.95 + 0.05 * valid.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
        assert block.norm.num_batches_tracked == 1


def block_steps(block, x, state=None):
    ys = []
    for k in range(x.shape[1]):
        y, state = block.step(x[:, k], state)
        ys.append(y)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("prenorm", [True, False])
@pytest.mark.parametrize("norm", NORMS)
def test_step_equals_forward_in_eval(prenorm, norm):
    x = torch.randn(2, 8, 4, dtype=torch.float64)
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    for i, activation in enumerate(ACTS):
        block = make_block(10 + i, norm=norm, prenorm=prenorm, activation=activation, dropout=0.3).eval()
        want, want_state = block(x, step_scale=scale, return_state=True)
        ys, state = [], None
        for k in range(8):
            y, state = block.step(x[:, k], state, step_scale=scale)
            ys.append(y)
        torch.testing.assert_close(torch.stack(ys, 1), want, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(state, want_state, rtol=1e-10, atol=1e-10)
        # chunked forward with the carried state
        a, s = block(x[:, :3], step_scale=scale, return_state=True)
        b = block(x[:, 3:], step_scale=scale, state=s)
        torch.testing.assert_close(torch.cat([a, b], 1), want, rtol=1e-10, atol=1e-10)


def test_step_in_train_mode():
    block = make_block(norm="batch").train()
    with pytest.raises(RuntimeError, match="BatchNorm.*eval"):
        block.step(torch.randn(2, 4, dtype=torch.float64))
    block = make_block(norm="layer", dropout=0.0).train()  # no batch statistics: fine in training
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    torch.testing.assert_close(block_steps(block, x)[0], block(x), rtol=1e-10, atol=1e-10)
