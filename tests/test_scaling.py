"""Standardisation fitted on the training split: the statistics, the model's use of them,
and the round trip through checkpoints, save_pretrained, eval, predict and step."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s5ssm import S5Model
from s5ssm.cli import main
from s5ssm.data import fit_standardization
from s5ssm.training.build import load_run


# ----------------------------------------------------------------------------- statistics
def test_fit_standardization_matches_numpy_over_unpadded_rows():
    rng = np.random.default_rng(0)
    arrays = [rng.normal(3.0, 2.0, (n, 3)) for n in (5, 9, 2)]
    mean, std = fit_standardization(arrays)
    rows = np.concatenate(arrays)
    np.testing.assert_allclose(mean, rows.mean(0))
    np.testing.assert_allclose(std, rows.std(0))


def test_fit_standardization_constant_nan_and_huge_values():
    x = np.array([[1.0, 7.0, np.nan, 1e12 + 1.0], [np.nan, 7.0, np.nan, 1e12 - 1.0], [3.0, 7.0, np.nan, 1e12 + 1.0],
                  [5.0, 7.0, np.nan, 1e12 - 1.0]])  # fmt: skip
    mean, std = fit_standardization([x])
    assert mean[0] == pytest.approx(3.0) and std[0] == pytest.approx(np.std([1.0, 3.0, 5.0]))  # NaN skipped
    assert (mean[1], std[1]) == (7.0, 1.0)  # constant: only shifted
    assert (mean[2], std[2]) == (0.0, 1.0)  # no values at all
    assert mean[3] == pytest.approx(1e12) and std[3] == pytest.approx(1.0)  # exact far from 0
    mean, std = fit_standardization([np.array([[1e30], [-1e30]], dtype=np.float32)])  # squares overflow float32
    assert np.isfinite(std).all() and std[0] == pytest.approx(1e30, rel=1e-6)


@pytest.mark.parametrize(
    "arrays, match",
    [([], "no arrays"), ([np.zeros((2, 2)), np.zeros((2, 3))], "channel counts"), ([np.array([[np.inf]])], "Inf")],
)
def test_fit_standardization_errors(arrays, match):
    with pytest.raises(ValueError, match=match):
        fit_standardization(arrays)


# ----------------------------------------------------------------------------- the model
def _fitted_model(**options):
    torch.manual_seed(0)
    model = S5Model(embed_dim=3, hidden_size=8, state_size=8, num_layers=2, output_dim=2, norm="layer",
                    standardize_inputs=True, standardize_outputs=True, **options).double()  # fmt: skip
    rng = np.random.default_rng(1)
    model.input_scaling.fit([rng.normal([100.0, -5.0, 0.0], [50.0, 0.1, 1.0], (40, 3))])
    model.output_scaling.fit([rng.normal([1e3, 0.01], [10.0, 0.001], (40, 2))])
    return model.eval()


def test_model_standardises_inputs_and_returns_outputs_in_data_units():
    model = _fitted_model(pooling="mean")
    plain = S5Model(**{k: v for k, v in model.config.items() if not k.startswith("standardize")}).double().eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "scaling" not in k})
    x = torch.randn(4, 10, 3, dtype=torch.float64) * torch.tensor([50.0, 0.1, 1.0]) + torch.tensor([100.0, -5.0, 0.0])
    inner = plain((x - model.input_scaling.mean) / model.input_scaling.std)
    expected = inner * model.output_scaling.std + model.output_scaling.mean
    torch.testing.assert_close(model(x), expected)


def test_scaling_travels_through_save_pretrained_and_the_streaming_step(tmp_path):
    model = _fitted_model(pooling="last")
    model.save_pretrained(tmp_path / "saved")
    loaded = S5Model.from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(loaded.input_scaling.std, model.input_scaling.std)
    x = torch.randn(2, 6, 3, dtype=torch.float64) * 50 + 100
    torch.testing.assert_close(loaded(x), model(x))
    for grad in (False, True):  # the compiled step (no grad) and the torch-ops step (its reference)
        cache = loaded.init_cache(2)
        with torch.set_grad_enabled(grad):
            for t in range(x.shape[1]):
                y_t, cache = loaded.step(x[:, t], cache)
                torch.testing.assert_close(y_t, model(x[:, : t + 1]))


def test_scaling_refuses_tokens_and_a_missing_head():
    with pytest.raises(ValueError, match="standardize_inputs"):
        S5Model(vocab_size=5, hidden_size=8, state_size=8, num_layers=1, standardize_inputs=True)
    with pytest.raises(ValueError, match="standardize_outputs"):
        S5Model(embed_dim=2, hidden_size=8, state_size=8, num_layers=1, standardize_outputs=True)


# ----------------------------------------------------------------------------- end to end
def _write_regression_ts(path: Path, n: int, seed: int) -> None:
    """Targets far from 0 in tiny units (like Covid3Month), inputs on a large offset."""
    rng = np.random.default_rng(seed)
    lines = ["@problemName toyreg", "@timeStamps false", "@univariate true", "@equalLength true",
             "@targetLabel true", "@data"]  # fmt: skip
    for _ in range(n):
        level = rng.normal()
        values = 5000.0 + 100.0 * (level + 0.1 * rng.standard_normal(12))
        lines.append(",".join(f"{v:.4f}" for v in values) + f":{0.02 + 0.001 * level:.6f}")
    path.write_text("\n".join(lines) + "\n")


def test_regression_scaling_round_trip_through_run_eval_and_predict(tmp_path):
    _write_regression_ts(tmp_path / "R_TRAIN.ts", 40, 0)
    _write_regression_ts(tmp_path / "R_TEST.ts", 12, 1)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "R_TRAIN.ts"), "--epochs", "3", "--hidden_size", "8", "--state_size",
            "8", "--num_layers", "1", "--quiet", "--run_dir", str(run)]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    cfg, model, data = load_run(run)
    assert cfg["standardize"] is True
    train_targets = data.splits["train"].targets
    # fitted on the training split only, stored in the checkpoint
    np.testing.assert_allclose(model.output_scaling.mean.numpy(), train_targets.mean(0), rtol=1e-5)
    np.testing.assert_allclose(model.input_scaling.std.numpy(), np.concatenate(data.splits["train"].inputs).std(0), rtol=1e-4)
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--data", str(tmp_path / "R_TEST.ts"), "--out", str(out)]) == 0
    with out.open() as handle:
        predicted = np.array([float(row[-1]) for row in list(csv.reader(handle))[1:]])
    truth = data.splits["test"].targets[:, 0]
    assert abs(predicted.mean() - 0.02) < 0.01  # in the targets' own units, not z-units
    # the summary's test MSE is in the data's units and is what predict's outputs give
    assert summary["results"]["test"]["mse"] == pytest.approx(float(((predicted - truth) ** 2).mean()), rel=1e-3)


def test_no_standardize_turns_it_off(tmp_path):
    _write_regression_ts(tmp_path / "R_TRAIN.ts", 20, 0)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "R_TRAIN.ts"), "--epochs", "1", "--hidden_size", "8", "--state_size",
            "8", "--num_layers", "1", "--quiet", "--no-standardize", "--run_dir", str(run)]  # fmt: skip
    assert main(args) == 0
    _, model, _ = load_run(run)
    assert model.input_scaling is None and model.output_scaling is None
