"""Damaged checkpoints: every truncated, empty or garbage file is named with a way to recover,
before any training; no pointer is followed out of the run directory; eval and predict need
no optimizer file."""

import csv
import json
import shutil

import pytest

from s5ssm import checkpoint
from s5ssm.cli import main

TINY = ["--task", "digits", "--size", "tiny", "--batch_size", "16", "--hidden_size", "8", "--state_size", "4",
        "--blocks", "1", "--num_layers", "1", "--quiet", "--epochs", "2", "--checkpoint_every", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--run_dir", str(run)]) == 0
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def newest(run, name="last"):
    return checkpoint.resolve(run / "checkpoints", name)


DAMAGE = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2]),
    "empty": lambda path: path.write_bytes(b""),
    "garbage": lambda path: path.write_bytes(b"\x00\xffnot a checkpoint" * 10),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
@pytest.mark.parametrize("file", ["model.safetensors", "optimizer.safetensors", "state.json"])
def test_damaged_last_checkpoint_is_named_with_the_way_back(run, capsys, damage, file):
    path = newest(run) / file
    DAMAGE[damage](path)
    steps = (run / "metrics_steps.csv").read_text()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "previous.json" in err, err
    assert (run / "metrics_steps.csv").read_text() == steps  # nothing trained


def test_the_way_back_resumes_from_the_checkpoint_before(run, capsys):
    best_was_newest = newest(run, "best") == newest(run)
    DAMAGE["garbage"](newest(run) / "model.safetensors")
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "copy" in err and ("best.json" in err) == best_was_newest  # the pointers to the damaged one
    shutil.copy(run / "checkpoints" / "previous.json", run / "checkpoints" / "last.json")
    if best_was_newest:
        shutil.copy(run / "checkpoints" / "previous.json", run / "checkpoints" / "best.json")
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 0
    with (run / "metrics_epochs.csv").open() as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["0", "1", "2"]


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_pointer_is_named(run, capsys, damage):
    DAMAGE[damage](run / "checkpoints" / "best.json")
    for command in (["eval", str(run)], ["train", "--resume", str(run), "--epochs", "3"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "best.json" in err and "damaged" in err, err


def test_damaged_best_model_is_found_before_training(run, capsys):
    DAMAGE["truncated"](newest(run, "best") / "model.safetensors")
    steps = (run / "metrics_steps.csv").read_text()
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert (run / "metrics_steps.csv").read_text() == steps


def test_pointer_out_of_the_run_directory_is_not_followed(run, tmp_path, capsys):
    outside = tmp_path / "elsewhere"
    shutil.copytree(newest(run, "best"), outside)
    for target in ("../../elsewhere", str(outside), "step-1/../../../elsewhere"):
        (run / "checkpoints" / "best.json").write_text(json.dumps({"dir": target}))
        assert main(["eval", str(run)]) == 2
        err = capsys.readouterr().err
        assert "best.json" in err and "never followed out of the run directory" in err


def test_eval_and_predict_need_no_optimizer_file(run, tmp_path, capsys):
    from s5ssm.data import get_task, save_npz

    for entry in (run / "checkpoints").glob("step-*"):
        (entry / "optimizer.safetensors").unlink()
    assert main(["eval", str(run)]) == 0
    assert "accuracy" in capsys.readouterr().out
    save_npz(get_task("digits").make(seed=0, size="tiny")["test"], tmp_path / "new.npz")
    assert main(["predict", str(run), "--data", str(tmp_path / "new.npz"), "--out", str(tmp_path / "p.csv")]) == 0


def test_checkpoint_of_another_model_is_named(run, capsys):
    from s5ssm import S5Model
    from s5ssm.io import save_safetensors

    path = newest(run, "best") / "model.safetensors"
    save_safetensors(S5Model(embed_dim=3, hidden_size=4, state_size=2, num_layers=1).state_dict(), path)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "does not fit" in err


def test_state_without_progress_keys_is_named(run, capsys):
    path = newest(run) / "state.json"
    state = json.loads(path.read_text())
    del state["progress"]["global_step"]
    path.write_text(json.dumps(state))
    assert main(["train", "--resume", str(run), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'global_step'" in err


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os

    from s5ssm.io import atomic_write_text

    atomic_write_text(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert os.stat(tmp_path / "atomic.txt").st_mode & 0o777 == os.stat(tmp_path / "plain.txt").st_mode & 0o777
