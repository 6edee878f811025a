"""Settings fitted to a data file: what is chosen, that the user's settings win, and that a
tiny set with many classes and unequal lengths trains with them."""

import json

import numpy as np
import pytest
import yaml

from s5ssm import fitted_defaults
from s5ssm.cli import main


def test_whole_sequence_labels_get_a_bidirectional_mean_pooled_model_and_a_step_budget():
    small = fitted_defaults.for_data({"kind": "classification", "per_step": False}, 20)
    assert small["bidirectional"] is True and small["pooling"] == "mean" and small["standardize"] is True
    assert small["encoder"] == "fcn" and small["augment"] is True
    regression = fitted_defaults.for_data({"kind": "regression"}, 20)
    assert regression["augment"] is False and regression["encoder"] == "window"
    for unfit in ({"vocab_size": 9}, {"timestamps": True}):  # the data --augment refuses
        assert fitted_defaults.for_data({"kind": "classification", **unfit}, 20)["augment"] is False
    assert "encoder" not in fitted_defaults.for_data({"kind": "classification"}, 20, model="lstm")
    assert "encoder" not in fitted_defaults.for_data({"kind": "classification", "vocab_size": 9}, 20)
    assert small["batch_size"] == 16 and small["epochs"] == fitted_defaults.MAX_EPOCHS  # 2 steps an epoch: capped
    large = fitted_defaults.for_data({"kind": "regression", "per_step": False}, 20000)
    assert large["batch_size"] == 32 and large["epochs"] == fitted_defaults.MIN_EPOCHS
    middle = fitted_defaults.for_data({"kind": "classification", "per_step": False}, 800)
    assert middle["epochs"] * (800 // 32) == pytest.approx(fitted_defaults.TARGET_STEPS, rel=0.05)
    assert middle["patience"] >= 10 and middle["warmup_epochs"] >= 1


def test_per_step_targets_keep_a_causal_model():
    chosen = fitted_defaults.for_data({"kind": "regression", "per_step": True}, 100)
    assert chosen["bidirectional"] is False and chosen["pooling"] == "none" and "encoder" not in chosen


def test_derived_settings_follow_what_the_user_set():
    chosen = fitted_defaults.for_data({"kind": "classification"}, 100, given={"epochs": 8, "batch_size": 50})
    assert chosen["epochs"] == 8 and chosen["batch_size"] == 50 and chosen["warmup_epochs"] == 1


def _write_many_classes(path, seed):
    """N=50, 10 classes of 5, unequal lengths (PickupGestureWiimoteZ's shape)."""
    rng = np.random.default_rng(seed)
    names = [f"g{k}" for k in range(10)]
    lines = ["@problemName many", "@timeStamps false", "@univariate true", "@equalLength false",
             "@classLabel true " + " ".join(names), "@data"]  # fmt: skip
    for k in range(50):
        length = int(rng.integers(6, 20))
        values = np.sin(np.arange(length) * (k % 10 + 1) / 5.0) * 300 + 1000 + rng.normal(size=length)
        lines.append(",".join(f"{v:.3f}" for v in values) + f":{names[k % 10]}")
    path.write_text("\n".join(lines) + "\n")


def test_cli_fits_defaults_to_a_tiny_set_with_many_classes_and_the_users_flags_win(tmp_path, capsys):
    _write_many_classes(tmp_path / "M_TRAIN.ts", 0)
    _write_many_classes(tmp_path / "M_TEST.ts", 1)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "M_TRAIN.ts"), "--epochs", "2", "--hidden_size", "8", "--state_size",
            "8", "--num_layers", "1", "--pooling", "last", "--quiet", "--run_dir", str(run)]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("defaults for 40 training sequences"))
    assert "bidirectional=True" in line and "pooling" not in line and "epochs" not in line.replace("warmup_epochs", "")
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["pooling"] == "last" and cfg["epochs"] == 2 and cfg["bidirectional"] is True
    assert cfg["standardize"] is True and cfg["batch_size"] == 16
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_trained"] == 2 and set(summary["results"]) == {"train", "val", "test"}
