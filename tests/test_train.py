"""End to end on tiny tasks: the CLI, exact resume after SIGKILL, atomic checkpoints, configs, errors."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from s5ssm import checkpoint
from s5ssm.cli import main
from s5ssm.training.optim import parameter_groups

TINY = ["--task", "digits", "--size", "tiny", "--epochs", "2", "--batch_size", "16", "--hidden_size", "16",
        "--state_size", "8", "--blocks", "1", "--num_layers", "2", "--quiet"]  # fmt: skip
SRC = str(Path(__file__).resolve().parents[1] / "src")
CRASHING_CLI = str(Path(__file__).resolve().parent / "helpers" / "crashing_cli.py")


def run_cli(args, env=None, check=True, kill=None):
    """Run `python -m s5ssm ARGS` in a fresh process (the way users and torchrun start it);
    kill="step=N" or "save" runs it through tests/helpers/crashing_cli.py, which kills it there."""
    full_env = dict(os.environ, PYTHONPATH=SRC, **(env or {}))
    start = [sys.executable, "-m", "s5ssm"] if kill is None else [sys.executable, CRASHING_CLI, kill]
    out = subprocess.run([*start, *args], capture_output=True, text=True, env=full_env)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def final_weights(run_dir):
    return checkpoint.load(Path(run_dir) / "checkpoints", "last")["model"]


def test_train_eval_predict_and_run_directory(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--run_dir", str(run)]) == 0
    for name in ("config.yaml", "metrics_steps.csv", "metrics_epochs.csv", "summary.json"):
        assert (run / name).is_file(), name
    result = summary(run)
    assert result["metric"] == "accuracy" and 0.0 <= result["results"]["test"]["accuracy"] <= 1.0
    with (run / "metrics_epochs.csv").open() as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [0, 1]
    out = run_cli(["eval", str(run), "--split", "test"])
    assert json.loads(out.stdout)["accuracy"] == pytest.approx(result["results"]["test"]["accuracy"])

    from s5ssm.data import get_task, save_npz

    data = get_task("digits").make(seed=0, size="tiny")["test"]
    save_npz(data, tmp_path / "new.npz")
    preds = tmp_path / "preds.csv"
    run_cli(["predict", str(run), "--data", str(tmp_path / "new.npz"), "--out", str(preds)])
    rows = list(csv.reader(preds.open()))
    assert rows[0][:3] == ["index", "prediction", "p_0"] and len(rows) == len(data) + 1
    probs = np.array([[float(v) for v in r[2:]] for r in rows[1:]])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    # new inputs come without labels: the same predictions
    with np.load(tmp_path / "new.npz") as archive:
        np.savez(tmp_path / "unlabelled.npz", **{k: archive[k] for k in archive.files if k not in ("y", "class_names")})
    run_cli(["predict", str(run), "--data", str(tmp_path / "unlabelled.npz"), "--out", str(tmp_path / "p2.csv")])
    assert list(csv.reader((tmp_path / "p2.csv").open())) == rows


@pytest.mark.parametrize("ema", ["0", "0.9"])
def test_resume_after_sigkill_mid_epoch_equals_uninterrupted(tmp_path, ema):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    args = [*TINY, "--epochs", "3", "--checkpoint_every", "2", "--dropout", "0.2", "--augment",  # draws from the RNG
            "--ema", ema]  # with averaged weights, the checkpoint holds the average and the optimizer's own
    run_cli(["train", *args, "--run_dir", str(whole)])
    # steps per epoch = ceil(60/16) = 4: step 7 is mid-epoch 1, after the step-6 checkpoint
    died = run_cli(["train", *args, "--run_dir", str(killed)], kill="step=7", check=False)
    assert died.returncode == -9
    assert checkpoint.load(killed / "checkpoints")["progress"]["global_step"] == 6
    run_cli(["train", "--resume", str(killed)])
    assert summary(killed)["results"] == summary(whole)["results"]
    for name, tensor in final_weights(whole).items():
        assert torch.equal(tensor, final_weights(killed)[name]), name
    live_whole, live_killed = (checkpoint.load(run / "checkpoints")["live"] for run in (whole, killed))
    assert live_whole.keys() == live_killed.keys() and bool(live_whole) == (ema != "0")
    for name, tensor in live_whole.items():
        assert torch.equal(tensor, live_killed[name]), name
    steps = [r["step"] for r in csv.DictReader((killed / "metrics_steps.csv").open())]
    assert steps == [str(i) for i in range(1, 13)]  # no step logged twice after the resume


def test_kill_during_checkpoint_save_leaves_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    # the first save (step 2) completes; the next one is killed after writing its model file
    died = run_cli(["train", *TINY, "--checkpoint_every", "2", "--run_dir", str(run)], kill="save", check=False)
    assert died.returncode == -9
    assert not (run / "checkpoints" / "last.json").exists()  # killed inside the very first save
    run2 = tmp_path / "run2"
    run_cli(["train", *TINY, "--checkpoint_every", "2", "--run_dir", str(run2)], kill="step=3", check=False)
    good = checkpoint.load(run2 / "checkpoints")["progress"]["global_step"]
    died = run_cli(["train", "--resume", str(run2)], kill="save", check=False)
    assert died.returncode == -9
    state = checkpoint.load(run2 / "checkpoints")  # the pointer still names a complete checkpoint
    assert state["progress"]["global_step"] == good
    run_cli(["train", "--resume", str(run2)])
    assert summary(run2)["results"]["test"]["accuracy"] >= 0.0


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_file_round_trip(tmp_path, suffix):
    config = tmp_path / f"cfg{suffix}"
    if suffix == ".yaml":
        config.write_text("task: digits\nsize: tiny\nepochs: 1\nhidden_size: 12\nstate_size: 8\nblocks: 1\nnum_layers: 1\nnorm: layer\n")
    else:
        config.write_text('task = "digits"\nsize = "tiny"\nepochs = 1\nhidden_size = 12\nstate_size = 8\nblocks = 1\nnum_layers = 1\nnorm = "layer"\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--hidden_size", "10", "--quiet", "--run_dir", str(run)]) == 0
    import yaml

    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["hidden_size"] == 10 and resolved["norm"] == "layer" and resolved["epochs"] == 1  # flag beats file
    again = tmp_path / "again"
    assert main(["train", "--config", str(run / "config.yaml"), "--run_dir", str(again)]) == 0
    assert summary(again)["results"] == summary(run)["results"]


def test_pendulum_conv_encoder_through_the_cli(tmp_path, capsys):
    """The pendulum task's conv encoder reaches the model, config.yaml and back; flags override it."""
    import yaml

    from s5ssm.cli import build_parser, resolve_config
    from s5ssm.encoders import ConvEncoder
    from s5ssm.training.build import load_run

    run = tmp_path / "run"
    args = ["train", "--task", "pendulum", "--size", "tiny", "--epochs", "1", "--quiet", "--run_dir", str(run)]
    assert main(args) == 0
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["encoder"] == "conv" and resolved["image_shape"] is None
    _, model, _ = load_run(run)
    assert isinstance(model.encoder, ConvEncoder) and model.encoder.image_shape == (24, 24)
    assert summary(run)["param_count"] == 13898

    def cfg(*flags):
        return resolve_config(build_parser().parse_args(["train", "--task", "pendulum", *flags]))

    lstm = tmp_path / "lstm"  # the baseline reads the frames with the same CNN
    args = ["train", "--task", "pendulum", "--size", "tiny", "--epochs", "1", "--quiet", "--model", "lstm",
            "--image_shape", "24x24", "--hidden_size", "8", "--run_dir", str(lstm)]  # fmt: skip
    assert main(args) == 0
    _, baseline, _ = load_run(lstm)
    assert isinstance(baseline.encoder, ConvEncoder) and baseline.encoder.image_shape == (24, 24)
    assert baseline.time_input and baseline.rnn.input_size == 9  # H and the time since the previous frame

    assert cfg("--image_shape", "24x24")["image_shape"] == [24, 24]
    assert cfg("--encoder", "linear")["encoder"] == "linear"
    with pytest.raises(SystemExit):
        cfg("--image_shape", "24")
    assert "--image_shape" in capsys.readouterr().err


def test_bad_flags_and_files_are_named(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(SystemExit, match="unknown option 'epochz'"):
        main(["train", "--config", str(bad)])
    bad.write_text("epochs: many\n")
    with pytest.raises(SystemExit, match="epochs must be an int"):
        main(["train", "--config", str(bad)])
    with pytest.raises(SystemExit):
        main(["train", "--epochs", "two"])
    assert "--epochs" in capsys.readouterr().err
    broken = tmp_path / "X_TRAIN.ts"
    broken.write_text("@problemName x\n@univariate true\n@classLabel true a b\n@data\n1,2,3:a\n1,2,oops:b\n")
    assert main(["train", "--data", str(broken), "--run_dir", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "X_TRAIN.ts" in err and "6" in err
    with pytest.raises(SystemExit, match="--task or --data"):
        main(["train", "--task", "digits", "--data", str(broken)])


def test_ts_file_with_test_sibling_and_lstm_baseline(tmp_path):
    rng = np.random.default_rng(0)

    def write(path, n):
        lines = ["@problemName toy", "@timeStamps false", "@univariate true", "@equalLength false",
                 "@classLabel true up down", "@data"]  # fmt: skip
        for _ in range(n):
            up = rng.random() < 0.5
            length = rng.integers(5, 12)
            values = np.cumsum(rng.random(length) * (1 if up else -1))
            lines.append(",".join(f"{v:.3f}" for v in values) + (":up" if up else ":down"))
        path.write_text("\n".join(lines) + "\n")

    write(tmp_path / "TOY_TRAIN.ts", 60)
    write(tmp_path / "TOY_TEST.ts", 20)
    run = tmp_path / "lstm"
    args = ["--data", str(tmp_path / "TOY_TRAIN.ts"), "--model", "lstm", "--epochs", "3", "--hidden_size", "8",
            "--num_layers", "1", "--quiet", "--run_dir", str(run)]  # fmt: skip
    assert main(["train", *args]) == 0
    result = summary(run)
    assert result["model"] == "lstm"
    assert sum(1 for _ in (tmp_path / "TOY_TEST.ts").open()) - 6 == 20  # the sibling file is the test split


def test_parameter_groups_follow_the_paper():
    from s5ssm import S5Model

    model = S5Model(embed_dim=2, hidden_size=4, state_size=4, num_layers=1, output_dim=2)
    base = dict(ssm_lr=1e-3, lr_factor=4.0, weight_decay=0.1, dt_global=False)

    def names(opt_config, **extra):
        groups = parameter_groups(model, {**base, "opt_config": opt_config, **extra})
        lookup = {id(p): n for n, p in model.named_parameters()}
        return {g["name"]: ({lookup[id(p)].split(".")[-1] for p in g["params"]}, g["lr"], g["weight_decay"]) for g in groups}

    std = names("standard")
    assert std["ssm"][0] >= {"Lambda_re", "Lambda_im", "log_step", "B"} and std["ssm"][1:] == (1e-3, 0.0)
    assert "C" in std["regular"][0] and std["regular"][1:] == (4e-3, 0.1)
    assert names("BandCdecay")["ssm_wd"][0] == {"B"}
    assert "B" in names("BfastandCdecay")["regular"][0]
    assert {"C", "D"} <= names("noBCdecay")["ssm"][0]
    assert "log_step" in names("standard", dt_global=True)["regular"][0]


def test_metrics_csv_truncated_to_nothing_keeps_its_header(tmp_path):
    """Resuming before the first epoch row (a kill inside the epoch-end save) drops every
    row; the header must stay so the rows appended next are still read by name."""
    from s5ssm.training.runlog import _append_csv, _truncate_csv

    path = tmp_path / "metrics_epochs.csv"
    _append_csv(path, {"epoch": 0, "val_loss": 1.5})
    with path.open("a") as handle:
        handle.write("1,")  # a row cut short by a kill mid-append
    _truncate_csv(path, "epoch", 5)
    assert path.read_text().splitlines() == ["epoch,val_loss", "0,1.5"]
    _truncate_csv(path, "epoch", -1)
    _append_csv(path, {"epoch": 0, "val_loss": 0.5})
    with path.open() as handle:
        assert list(csv.DictReader(handle)) == [{"epoch": "0", "val_loss": "0.5"}]


@pytest.mark.parametrize("select_by", ["metric", "loss"])
def test_the_best_checkpoint_is_the_one_select_by_names(tmp_path, select_by):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "4", "--select_by", select_by, "--run_dir", str(run)]) == 0
    rows = list(csv.DictReader((run / "metrics_epochs.csv").open()))
    if select_by == "loss":
        expected = min(range(len(rows)), key=lambda i: float(rows[i]["val_loss"]))  # the first of equal losses
    else:
        expected = min(range(len(rows)), key=lambda i: (-float(rows[i]["val_accuracy"]), float(rows[i]["val_loss"])))
    assert summary(run)["best_epoch"] == expected
    assert summary(run)["results"]["val"]["loss"] == pytest.approx(float(rows[expected]["val_loss"]), rel=1e-6)


def test_select_by_loss_prefers_the_lower_loss_over_the_higher_accuracy():
    from s5ssm.training.epoch import _better

    progress = {"best": 0.9, "best_loss": 0.5}
    assert not _better("accuracy", 0.8, 0.4, progress, "metric")
    assert _better("accuracy", 0.8, 0.4, progress, "loss")
    assert _better("accuracy", 0.9, 0.4, progress, "metric")  # equal accuracy: the lower loss
    assert not _better("accuracy", 0.95, 0.6, progress, "loss")
