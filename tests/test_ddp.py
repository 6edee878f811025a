"""Data-parallel training: `torchrun --nproc_per_node 2 -m s5ssm train` on this CPU (gloo),
and the TensorBoard events of a run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s5ssm import checkpoint

SRC = str(Path(__file__).resolve().parents[1] / "src")
# 60 training digits; LayerNorm and no dropout, so 2 processes at batch 15 take exactly the
# steps of 1 process at batch 30 (BatchNorm statistics and dropout masks are per process)
BASE = ["train", "--task", "digits", "--size", "tiny", "--epochs", "2", "--hidden_size", "16", "--state_size", "8",
        "--blocks", "1", "--num_layers", "2", "--norm", "layer", "--dropout", "0", "--quiet"]  # fmt: skip


def launch(args, processes=2, env=None, check=True):
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m s5ssm ARGS`."""
    full_env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **(env or {}))
    full_env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "s5ssm", *args]  # fmt: skip
    if processes == 1:
        command = [sys.executable, "-m", "s5ssm", *args]
    out = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def weights(run_dir, which="last"):
    return checkpoint.load(Path(run_dir) / "checkpoints", which)["model"]


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    out = launch([*BASE, "--batch_size", "15", "--run_dir", str(run)])
    return run, out


def test_two_processes_take_the_steps_of_one_at_double_batch(two_process_run, tmp_path):
    run, out = two_process_run
    assert out.stdout.count("summary (s5 on digits") == 1  # only the main process reports
    assert "2 processes at batch size 15 each" in out.stdout
    assert summary(run)["processes"] == 2
    single = tmp_path / "single"
    launch([*BASE, "--batch_size", "30", "--run_dir", str(single)], processes=1)
    ddp, one = weights(run), weights(single)
    assert ddp.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    start = checkpoint.load(run / "checkpoints")["progress"]
    assert start["global_step"] == 4  # 2 epochs of 60 / (2·15)
    # and the run trained: the weights moved from the shared initialisation
    fresh = tmp_path / "fresh"
    launch([*BASE, "--batch_size", "30", "--epochs", "1", "--ssm_lr", "1e-12", "--run_dir", str(fresh)], processes=1)
    assert any(not torch.allclose(ddp[k], weights(fresh)[k], atol=1e-4) for k in ddp)


def test_resume_under_torchrun_equals_the_uninterrupted_run(two_process_run, tmp_path):
    run, _ = two_process_run
    killed = tmp_path / "killed"
    args = [*BASE, "--batch_size", "15", "--checkpoint_every", "1", "--run_dir", str(killed)]
    died = launch(args, env={"S5SSM_KILL_AT_STEP": "3"}, check=False)
    assert died.returncode != 0 and not (killed / "summary.json").exists()
    assert checkpoint.load(killed / "checkpoints")["progress"]["global_step"] == 2
    launch(["train", "--resume", str(killed)])
    assert summary(killed)["results"] == summary(run)["results"]
    for name, value in weights(run).items():
        assert torch.equal(weights(killed)[name], value), name


def test_more_processes_than_sequences_is_an_error(tmp_path):
    out = launch([*BASE, "--size", "1,4,4", "--batch_size", "1", "--run_dir", str(tmp_path / "r")], check=False)
    assert out.returncode != 0
    assert "WORLD_SIZE=2 exceeds the 1 training sequences" in out.stderr


def test_torchrun_needs_a_run_dir():
    out = launch(BASE, check=False)
    assert out.returncode != 0 and "give --run_dir" in out.stderr


def test_tensorboard_events_survive_a_resume(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    args = [*BASE, "--batch_size", "16", "--checkpoint_every", "2", "--run_dir", str(run)]
    launch(args, processes=1, env={"S5SSM_KILL_AT_STEP": "7"}, check=False)  # 4 steps per epoch
    launch(["train", "--resume", str(run)], processes=1)
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/val_loss", "epoch/val_accuracy"} <= set(scalars)
    # the steps logged before the kill and after the checkpoint are purged, not duplicated
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 9))
    assert [e.step for e in events.Scalars("epoch/val_loss")] == [4, 8]
