"""Every training setting is validated before training, the same way from the command line,
a --config file and a run directory's config.yaml; --resume changes only what it may."""

import csv

import pytest
import yaml

from s5ssm.cli import build_parser, main, resolve_config
from s5ssm.settings import SettingError, read_run_config, validate

TINY = ["--task", "digits", "--size", "tiny", "--batch_size", "16", "--hidden_size", "8", "--state_size", "4",
        "--blocks", "1", "--num_layers", "1", "--quiet"]  # fmt: skip


def resolve(*flags):
    return resolve_config(build_parser().parse_args(["train", "--task", "digits", *flags]))


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--ssm_lr", "-0.001"], ["--ssm_lr", "> 0", "-0.001"]),
        (["--ssm_lr", "0"], ["--ssm_lr", "> 0"]),
        (["--ssm_lr", "nan"], ["--ssm_lr", "finite", "nan"]),
        (["--lr_factor", "0"], ["--lr_factor", "> 0"]),
        (["--weight_decay", "-0.1"], ["--weight_decay", ">= 0"]),
        (["--warmup_epochs", "-1"], ["--warmup_epochs", ">= 0"]),
        (["--epochs", "2", "--warmup_epochs", "3"], ["--warmup_epochs", "<= epochs (2)", "3"]),
        (["--ssm_lr", "0.001", "--lr_min", "0.01"], ["--lr_min", "learning rates", "0.01"]),
        (["--lr_factor", "0.5", "--ssm_lr", "0.001", "--lr_min", "0.0008"], ["--lr_min", "0.0005"]),
        (["--grad_clip", "-1"], ["--grad_clip", ">= 0"]),
        (["--checkpoint_every", "-5"], ["--checkpoint_every", ">= 0"]),
        (["--device", "tpu"], ["--device", "'tpu'", "cpu, cuda"]),
        (["--seed", str(2**70)], ["--seed", "< 4294967296"]),
        (["--seed", "-1"], ["--seed", ">= 0"]),
        (["--bn_momentum", "1.5"], ["--bn_momentum", "<= 1"]),
        (["--bn_momentum", "-0.5"], ["--bn_momentum", ">= 0"]),
        (["--step_rescale", "inf"], ["--step_rescale", "finite"]),
        (["--hidden_size", "-1"], ["--hidden_size", ">= 1"]),
        (["--dt_min", "0.5", "--dt_max", "0.1"], ["--dt_min", "<= dt_max"]),
        (["--dropout", "1.0"], ["--dropout", "< 1"]),
    ],
)
def test_bad_settings_on_the_command_line_are_named(flags, words):
    with pytest.raises(SystemExit) as err:
        resolve(*flags)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


@pytest.mark.parametrize(
    "text, words",
    [
        ("epochs: null\n", ["cfg.yaml: epochs", "must be an int", "null"]),
        ("task_options: 5\n", ["cfg.yaml: task_options", "mapping", "5"]),
        ("device: tpu\n", ["cfg.yaml: device", "'tpu'"]),
        ("ssm_lr: .nan\n", ["cfg.yaml: ssm_lr", "finite"]),
        ("weight_decay: -1.0\n", ["cfg.yaml: weight_decay", ">= 0"]),
        ("step_rescale: .inf\n", ["cfg.yaml: step_rescale", "finite"]),
        ("warmup_epochs: 4\nepochs: 3\n", ["cfg.yaml: warmup_epochs", "<= epochs (3)"]),
    ],
)
def test_bad_settings_in_a_config_file_are_named(tmp_path, text, words):
    config = tmp_path / "cfg.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as err:
        resolve("--config", str(config))
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_a_flag_contradicting_the_config_file_names_the_flag(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("warmup_epochs: 4\n")
    with pytest.raises(SystemExit, match=r"--config .*cfg.yaml: warmup_epochs must be <= epochs \(2\)"):
        resolve("--config", str(config), "--epochs", "2")


def test_library_training_validates_too(tmp_path):
    from s5ssm.training.loop import train

    cfg = resolve("--size", "tiny")
    with pytest.raises(SettingError, match="ssm_lr"):
        train({**cfg, "ssm_lr": float("nan")}, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics_steps.csv").exists()


def run_config(**changes):
    cfg = resolve("--size", "tiny", *TINY[4:-1])
    cfg.update(changes)
    return cfg


@pytest.mark.parametrize(
    "text, words",
    [
        ("!!python/object/apply:os.system ['echo hacked']\n", ["config.yaml", "not a plain YAML"]),
        ("- 1\n- 2\n", ["config.yaml", "mapping", "list"]),
        (None, ["config.yaml", "missing", "'epochs'"]),
        ("extra", ["config.yaml", "unknown option 'color'"]),
        ("bad value", ["config.yaml: ssm_lr", "> 0"]),
        ("bad size", ["config.yaml: hidden_size", ">= 1", "-1"]),
        ("no data", ["config.yaml", "neither a task nor data"]),
    ],
)
def test_run_directory_config_is_validated(tmp_path, capsys, text, words):
    run = tmp_path / "run"
    run.mkdir()
    cfg = run_config()
    if text is None:
        del cfg["epochs"]
        text = yaml.safe_dump(cfg)
    elif text == "extra":
        text = yaml.safe_dump({**cfg, "color": "red"})
    elif text == "bad value":
        text = yaml.safe_dump({**cfg, "ssm_lr": -1.0})
    elif text == "bad size":
        text = yaml.safe_dump({**cfg, "hidden_size": -1})
    elif text == "no data":
        text = yaml.safe_dump({**cfg, "task": None})
    (run / "config.yaml").write_text(text)
    for command in (["eval", str(run)], ["train", "--resume", str(run)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        for word in words:
            assert word in err, (command, word, err)
    assert "hacked" not in capsys.readouterr().out


def test_validate_without_defaults_still_checks_types_and_ranges():
    with pytest.raises(SettingError, match="epochs must be an integer, got '3'"):
        validate({"epochs": "3"})
    with pytest.raises(SettingError, match="x.yaml: batch_size must be >= 1"):
        validate({"batch_size": 0}, name=lambda key: f"x.yaml: {key}")
    validate({"task": None, "image_shape": None, "epochs": 3})


def epochs_logged(run):
    with (run / "metrics_epochs.csv").open() as handle:
        return [int(r["epoch"]) for r in csv.DictReader(handle)]


def test_resume_extends_epochs_and_refuses_other_changes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--run_dir", str(run)]) == 0
    capsys.readouterr()
    # data, model and training settings may not change: refused, naming the flag
    for flag, value in (("--hidden_size", "16"), ("--ssm_lr", "0.01"), ("--task", "adding"), ("--seed", "3")):
        assert main(["train", "--resume", str(run), flag, value]) == 2
        err = capsys.readouterr().err
        assert flag in err and "--epochs" in err, err
    assert read_run_config(run)["hidden_size"] == 8
    # the same value, or a harmless flag, is fine; more epochs train on
    assert main(["train", "--resume", str(run), "--epochs", "3", "--hidden_size", "8", "--no-quiet"]) == 0
    assert epochs_logged(run) == [0, 1, 2]
    assert read_run_config(run)["epochs"] == 3
    # fewer epochs than already trained: refused
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "already trained 3 epochs" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--run_dir", str(tmp_path / "other")]) == 2
    assert "--run_dir" in capsys.readouterr().err
