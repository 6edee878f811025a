"""Data-parallel training: `torchrun --nproc_per_node 2 -m s5ssm train` on this CPU (gloo),
and the TensorBoard events of a run.

Most tests share one uninterrupted 2-process run with the default BatchNorm and dropout (a
module fixture); single-process runs go in-process, which keeps the file near a minute on
2 cores.
"""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from s5ssm import checkpoint, distributed
from s5ssm.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")
CRASHING_CLI = str(Path(__file__).resolve().parent / "helpers" / "crashing_cli.py")
# 60 training digits, 21 validation (an uneven split between the processes); BatchNorm (the
# default) and dropout. 2 processes x 10 = 20 a step: 3 steps an epoch, 6 in all;
# checkpoints after steps 2, 3, 4 and 6.
BASE = ["train", "--task", "digits", "--size", "60,21,20", "--epochs", "2", "--hidden_size", "16",
        "--state_size", "8", "--blocks", "1", "--num_layers", "2", "--grad_clip", "0.1", "--checkpoint_every", "2",
        "--quiet"]  # fmt: skip
DDP = [*BASE, "--dropout", "0.1", "--batch_size", "10"]
# BatchNorm statistics and dropout masks are per process; without them a run is the math of
# one process at the global batch (gradient clipping acts on the gradient DDP has already
# averaged, the one a single process computes)
EXACT = [*BASE, "--norm", "layer", "--dropout", "0"]
TAGS = {"train/loss", "train/lr", "epoch/train_loss", "epoch/train_accuracy", "epoch/val_loss", "epoch/val_accuracy"}


def launch(args, env=None, check=True, kill=None):
    """`python -m torch.distributed.run --standalone --nproc_per_node 2 -m s5ssm ARGS`
    (kill="step=N": every process runs tests/helpers/crashing_cli.py, which kills it there)."""
    full_env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", **(env or {}))
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *(["-m", "s5ssm"] if kill is None else [CRASHING_CLI, kill]), *args]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=300)
    if check and out.returncode != 0:
        raise AssertionError(f"exit {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def weights(run_dir, which="last"):
    return checkpoint.load(Path(run_dir) / "checkpoints", which)["model"]


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


def rows(run_dir, name):
    with (Path(run_dir) / name).open() as handle:
        return list(csv.DictReader(handle))


def scalars(run_dir):
    """{tag: [(step, value)]} of the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(Path(run_dir) / "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    return run, launch([*DDP, "--run_dir", str(run)])


def test_two_processes_train_like_one_process_at_twice_the_batch(tmp_path):
    run = tmp_path / "ddp"
    out = launch([*EXACT, "--batch_size", "10", "--run_dir", str(run)])
    assert out.stdout.count("summary (s5 on digits") == 1 and out.stdout.count("epoch 1: train loss") == 1
    assert "2 processes at batch size 10 each" in out.stdout  # and the other process printed nothing
    assert summary(run)["processes"] == 2
    assert checkpoint.load(run / "checkpoints")["progress"]["global_step"] == 6
    single = tmp_path / "single"
    assert main([*EXACT, "--batch_size", "20", "--run_dir", str(single)]) == 0
    ddp, one = weights(run), weights(single)
    assert ddp.keys() == one.keys()  # the unwrapped model's names, no "module." prefix
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    # the epoch's train sums are added up over the processes, and each process evaluates
    # its share of the validation split with the same weights (else these would differ)
    for ddp_row, one_row in zip(rows(run, "metrics_epochs.csv"), rows(single, "metrics_epochs.csv"), strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            assert float(ddp_row[key]) == pytest.approx(float(one_row[key]), rel=1e-5), key
    for split, result in summary(single)["results"].items():
        assert summary(run)["results"][split] == pytest.approx(result, rel=1e-5), split
    # and it trained: the weights moved from the initialisation both runs share
    from s5ssm.training.build import build_model
    from s5ssm.training.data import load_data

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    torch.manual_seed(cfg["seed"])
    initial = build_model(cfg, load_data(cfg).info).state_dict()
    assert any(not torch.allclose(ddp[k], initial[k], atol=1e-3) for k in ddp)


def test_processes_hold_the_same_model(ddp_run):
    """Each process evaluated its share of the validation split with its own copy of the
    model (weights and BatchNorm statistics): the sum equals rank 0's checkpoint evaluated
    whole only if the copies agree."""
    from s5ssm.training.build import load_run
    from s5ssm.training.evaluation import evaluate

    run, _ = ddp_run
    cfg, model, data = load_run(run, "last")
    whole = evaluate(model, data.splits["val"], data.info, 10, "cpu")
    last = rows(run, "metrics_epochs.csv")[-1]
    assert float(last["val_loss"]) == pytest.approx(whole["loss"], rel=1e-6)
    assert float(last["val_accuracy"]) == whole["accuracy"]


def test_eval_reads_the_checkpoint_of_a_ddp_run(ddp_run, capsys):
    run, _ = ddp_run
    assert main(["eval", str(run), "--split", "test"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == pytest.approx(summary(run)["results"]["test"]["accuracy"])
    assert result["loss"] == pytest.approx(summary(run)["results"]["test"]["loss"], rel=1e-5)


def test_tensorboard_events_are_written_by_the_main_process_only(ddp_run):
    run, _ = ddp_run
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    events = scalars(run)
    assert TAGS <= set(events)
    assert [step for step, _ in events["train/loss"]] == list(range(1, 7))
    assert [step for step, _ in events["epoch/val_loss"]] == [3, 6]
    logged = [float(r["loss"]) for r in rows(run, "metrics_steps.csv")]
    np.testing.assert_allclose([value for _, value in events["train/loss"]], logged, rtol=1e-6)


def test_resume_under_torchrun_equals_the_uninterrupted_run(ddp_run, tmp_path):
    run, _ = ddp_run
    killed = tmp_path / "killed"
    # killed after step 6, the end of the last epoch: steps 5 and 6 are logged, step 4 is the checkpoint
    died = launch([*DDP, "--run_dir", str(killed)], kill="step=6", check=False)
    assert died.returncode != 0 and not (killed / "summary.json").exists()
    assert len(rows(killed, "metrics_steps.csv")) == 6
    state = checkpoint.load(killed / "checkpoints")
    # mid-epoch 1 after one global batch: the running sums are over both processes' 2 x 10
    assert state["progress"]["global_step"] == 4 and state["progress"]["sums"][2] == 20
    assert len(state["rng"]) == 2 and not torch.equal(*state["rng"])  # each process's own dropout masks
    launch(["train", "--resume", str(killed)])
    assert summary(killed)["results"] == summary(run)["results"]
    for name, value in weights(run).items():
        assert torch.equal(weights(killed)[name], value), name
    drop_time = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(killed, "metrics_epochs.csv")]
    assert drop_time == [{k: v for k, v in r.items() if k != "seconds"} for r in rows(run, "metrics_epochs.csv")]
    assert rows(killed, "metrics_steps.csv") == rows(run, "metrics_steps.csv")
    # the rows and events logged after the checkpoint and before a kill are dropped, not duplicated
    resumed, whole = scalars(killed), scalars(run)
    assert TAGS <= set(resumed)
    for tag in TAGS:
        assert resumed[tag] == whole[tag], tag


def test_resume_with_another_number_of_processes_is_an_error(ddp_run, tmp_path, capsys):
    run, _ = ddp_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    assert main(["train", "--resume", str(copy)]) == 2
    assert "trained by 2 process(es)" in capsys.readouterr().err


def test_more_processes_than_sequences_is_an_error(tmp_path):
    out = launch([*BASE, "--size", "1,4,4", "--batch_size", "1", "--run_dir", str(tmp_path / "r")], check=False)
    assert out.returncode != 0
    assert "WORLD_SIZE=2 exceeds the 1 training sequences" in out.stderr


def test_torchrun_needs_a_run_dir(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit, match="give --run_dir"):
        main(BASE)


@pytest.mark.parametrize("n, batch_size, world", [(60, 10, 2), (7, 2, 2), (11, 3, 3), (5, 4, 2)])
def test_shards_are_equal_and_global_batch_k_is_a_run_of_the_order(n, batch_size, world):
    order = np.random.default_rng(n).permutation(n)
    shards = [distributed.shard(order, batch_size, distributed.Context(rank, world)) for rank in range(world)]
    steps = distributed.steps_per_epoch(n, batch_size, distributed.Context(0, world))
    assert all(len(s) == steps * batch_size for s in shards)  # every process takes the same steps
    per_step = batch_size * world
    padded = np.resize(order, steps * per_step)
    for k in range(steps):
        union = np.concatenate([s[k * batch_size : (k + 1) * batch_size] for s in shards])
        np.testing.assert_array_equal(union, padded[k * per_step : (k + 1) * per_step])
    assert set(np.concatenate(shards)) == set(range(n))


def test_training_without_tensorboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    run = tmp_path / "run"
    assert main([*EXACT, "--epochs", "1", "--batch_size", "20", "--run_dir", str(run)]) == 0
    assert "TensorBoard events are off" in capsys.readouterr().out
    assert not (run / "tensorboard").exists() and (run / "summary.json").is_file()
