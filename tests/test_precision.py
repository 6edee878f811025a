"""Mixed precision (s5ssm.precision): bf16 GEMMs with a float32 scan, `train --precision`.

Autocast runs on the CPU too, so the model's handling of it is tested here with
torch.autocast("cpu", bfloat16); `s5ssm train --precision bf16` itself needs CUDA (marked).
"""

import pytest
import torch
import torch.nn.functional as F

from s5ssm import S5Model, S5SSM, ssm
from s5ssm.cli import main
from s5ssm.precision import Autocast, autocast_input, check_precision, for_training
from s5ssm.scan import core, parallel

from test_train import TINY


def _record_scans(monkeypatch):
    """The dtypes of B̄u that reach the parallel scan, and of the GEMMs' outputs."""
    seen = {"scan": [], "linear": []}
    scan, linear = parallel.scan, F.linear

    def recording_scan(lambda_bar, bu, *args):
        seen["scan"].append(bu.dtype)
        return scan(lambda_bar, bu, *args)

    def recording_linear(*args, **kwargs):
        out = linear(*args, **kwargs)
        seen["linear"].append(out.dtype)
        return out

    monkeypatch.setattr(parallel, "scan", recording_scan)
    monkeypatch.setattr(ssm.F, "linear", recording_linear)
    return seen


@pytest.mark.parametrize("per_step", [False, True])
def test_model_under_bf16_autocast_scans_in_float32(monkeypatch, per_step):
    """Under autocast the S5 projections run in bf16, the scan gets complex64, and the
    output is within bf16 rounding of the float32 model's (without autocast handling the
    encoder's bf16 output was refused by the first block)."""
    torch.manual_seed(0)
    model = S5Model(embed_dim=3, output_dim=2, hidden_size=8, state_size=8, num_layers=2, scan_backend="parallel")
    x = torch.randn(2, 12, 3)
    scale = 0.5 + torch.rand(2, 12) if per_step else None
    want = model(x, step_scale=scale)
    seen = _record_scans(monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(x, step_scale=scale)
    assert set(seen["scan"]) == {torch.complex64}
    assert set(seen["linear"]) == {torch.bfloat16}
    assert got.dtype == torch.bfloat16  # the head's GEMM; Autocast (training) returns it as float32
    torch.testing.assert_close(got.float(), want, rtol=0.05, atol=0.05)
    assert not torch.equal(got.float(), want)


def test_fused_cpu_layer_steps_aside_under_autocast():
    """The compiled CPU layer (cpu_layer) computes in the layer's dtype: under autocast the
    layer takes the separate ops, whose GEMMs autocast lowers."""
    torch.manual_seed(0)
    layer = S5SSM(8, 8)
    u = torch.randn(2, 12, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not core.fuses(u, None, return_states=False)
        y = layer(u)
    y.sum().backward()
    torch.testing.assert_close(y.float(), layer(u), rtol=0.05, atol=0.05)
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_autocast_input_takes_lowered_activations_back():
    x = torch.randn(3, dtype=torch.bfloat16)
    assert autocast_input(x, torch.float32) is x  # autocast off: the dtype check sees bf16 and says so
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_input(x, torch.float32).dtype == torch.float32
        y = torch.randn(3, dtype=torch.float64)
        assert autocast_input(y, torch.float32) is y  # only a lower precision is raised


def test_autocast_wrapper_returns_float32_for_the_loss():
    torch.manual_seed(0)
    model = S5Model(embed_dim=3, output_dim=2, hidden_size=8, state_size=8, num_layers=1, scan_backend="parallel")
    wrapped = Autocast(model, "cpu", torch.bfloat16)
    out = wrapped(torch.randn(2, 5, 3))
    assert out.dtype == torch.float32
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_precision_choices_and_devices():
    model = torch.nn.Linear(2, 2)
    assert for_training(model, "fp32", torch.device("cpu")) is model
    wrapped = for_training(model, "bf16", torch.device("cuda", 0))
    assert isinstance(wrapped, Autocast) and wrapped.device_type == "cuda" and wrapped.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        check_precision("fp16", "cuda")
    with pytest.raises(ValueError, match="bf16 trains under CUDA autocast: it needs a cuda device, got cpu"):
        check_precision("bf16", "cpu")


def test_train_flag_is_checked(capsys):
    with pytest.raises(SystemExit, match="--precision bf16 trains under CUDA autocast"):
        main(["train", *TINY, "--precision", "bf16"])
    with pytest.raises(SystemExit, match="--precision must be one of"):
        main(["train", *TINY, "--precision", "half"])


@pytest.mark.cuda
def test_train_bf16_on_cuda(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--device", "cuda", "--precision", "bf16", "--run_dir", str(run)]) == 0
    assert (run / "summary.json").is_file()
