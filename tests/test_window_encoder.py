"""encoder="window" and "fcn": each step encoded from centred windows of steps
(s5ssm.encoders.WindowEncoder, FCNEncoder)."""

import pytest
import torch

from s5ssm.cli import main
from s5ssm.encoders import FCNEncoder, WindowEncoder
from s5ssm.model import S5Model


def reference_conv(conv: torch.nn.Conv1d, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The plain definition: out[b, t] = bias + Σ_j W[:, :, j] · x[b, t - width // 2 + j] over
    the steps inside the sequence, masked steps read as zeros."""
    if mask is not None:
        x = x * mask[..., None].to(x.dtype)
    B, L, _ = x.shape
    weight, bias = conv.weight, conv.bias  # (H, D, width), (H,)
    width = weight.shape[-1]
    out = bias.expand(B, L, -1).clone()
    for t in range(L):
        for j in range(width):
            s = t - width // 2 + j
            if 0 <= s < L:
                out[:, t] += x[:, s] @ weight[:, :, j].T
    return out


def reference_window(encoder: WindowEncoder, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return reference_conv(encoder.conv, x, mask)


def reference_fcn(encoder: FCNEncoder, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Three blocks of reference_conv, then the batch's mean and (biased) variance over the
    valid steps, the norm's affine map, and ReLU."""
    valid = torch.ones(x.shape[:2], dtype=torch.bool) if mask is None else mask
    h = x
    for conv, norm in zip(encoder.convs, encoder.norms):
        h = reference_conv(conv, h, mask)
        values = h[valid]  # (valid steps, H)
        mean, var = values.mean(0), values.var(0, unbiased=False)
        h = torch.relu((h - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias)
    return h


@pytest.mark.parametrize("width", [1, 3, 9])
def test_window_encoder_matches_its_definition_in_float64_with_gradients(width):
    torch.manual_seed(0)
    encoder = WindowEncoder(3, 5, width).double()
    x = torch.randn(2, 12, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 8:] = False
    torch.testing.assert_close(encoder(x, mask), reference_window(encoder, x, mask))
    torch.autograd.gradcheck(lambda x: encoder(x, mask), (x,))


def test_fcn_encoder_matches_its_definition_in_float64_with_gradients():
    """In training mode (batch statistics over the valid steps only) and in eval mode."""
    torch.manual_seed(0)
    encoder = FCNEncoder(3, 5, 3).double()
    assert encoder.look_ahead == 1 + 2 + 1
    x = torch.randn(3, 12, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[1, 8:] = False
    mask[2, :3] = False
    with torch.no_grad():
        for norm in encoder.norms:  # non-trivial affine maps
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    out = encoder(x, mask)
    expected = reference_fcn(encoder, x, mask)
    torch.testing.assert_close(out[mask], expected[mask])
    torch.autograd.gradcheck(lambda x: encoder(x, mask)[mask], (x,))
    encoder.eval()
    for norm in encoder.norms:
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    h = x
    for conv, norm in zip(encoder.convs, encoder.norms):
        h = reference_conv(conv, h, mask)
        h = torch.relu((h - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias)
    torch.testing.assert_close(encoder(x, mask)[mask], h[mask])


@pytest.mark.parametrize("encoder", ["window", "fcn"])
def test_padding_does_not_change_the_valid_steps(encoder):
    torch.manual_seed(1)
    model = S5Model(2, 8, 4, 2, encoder=encoder, encoder_width=5, pooling="mean", bidirectional=True,
                    output_dim=3).eval()  # fmt: skip
    short = torch.randn(1, 7, 2)
    padded = torch.cat([short, torch.full((1, 4, 2), 7.0)], dim=1)
    mask = torch.arange(11)[None] < 7
    torch.testing.assert_close(model(padded, mask=mask), model(short), rtol=1e-5, atol=1e-6)


def test_a_window_model_refuses_to_step_and_bad_widths_are_named():
    model = S5Model(2, 8, 4, 1, encoder="window", output_dim=3).eval()
    with pytest.raises(ValueError, match="encoder='window' reads 4 steps ahead"):
        model.init_cache(1)
    with pytest.raises(ValueError, match="encoder='fcn' reads 7 steps ahead"):
        S5Model(2, 8, 4, 1, encoder="fcn", output_dim=3).eval().step(torch.randn(1, 2), None)
    with pytest.raises(ValueError, match="encoder_width must be a positive odd int"):
        S5Model(2, 8, 4, 1, encoder="fcn", encoder_width=2)
    with pytest.raises(ValueError, match="encoder_width must be a positive odd int"):
        S5Model(2, 8, 4, 1, encoder="window", encoder_width=4)
    with pytest.raises(ValueError, match="encoder='window' reads float inputs"):
        S5Model(vocab_size=10, hidden_size=8, state_size=4, num_layers=1, encoder="window")


def test_cli_trains_and_evaluates_a_window_model(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--task", "digits", "--size", "tiny", "--epochs", "1", "--hidden_size", "8", "--state_size", "4",
            "--num_layers", "1", "--blocks", "1", "--quiet", "--encoder", "window", "--encoder_width", "3", "--run_dir", str(run)]
    assert main(args) == 0
    assert main(["eval", str(run), "--split", "test"]) == 0
    with pytest.raises(SystemExit, match="--encoder_width must be odd"):
        main(["train", *args[1:-2], "--encoder_width", "4", "--run_dir", str(tmp_path / "r2")])
