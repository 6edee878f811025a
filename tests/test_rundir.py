"""A run directory: locked while in use, started afresh after a run that never
checkpointed, and Ctrl-C stopping at a checkpoint that resumes."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from s5ssm import checkpoint, rundir
from s5ssm.training import runlog
from s5ssm.cli import main

TINY = ["--task", "digits", "--size", "tiny", "--batch_size", "16", "--hidden_size", "8", "--state_size", "4",
        "--blocks", "1", "--num_layers", "1", "--quiet"]  # fmt: skip


def steps_logged(run):
    with (run / "metrics_steps.csv").open() as handle:
        return [int(r["step"]) for r in csv.DictReader(handle)]


def test_second_run_into_a_locked_directory_fails_at_once(tmp_path, capsys):
    run = tmp_path / "run"
    with rundir.locked(run):
        start = time.perf_counter()
        assert main(["train", *TINY, "--epochs", "1", "--run_dir", str(run)]) == 2
        assert time.perf_counter() - start < 5
        err = capsys.readouterr().err
        assert str(run) in err and "in use by another s5ssm run" in err and str(os.getpid()) in err
        assert not (run / "config.yaml").exists() and not (run / "metrics_steps.csv").exists()
        assert main(["train", "--resume", str(run)]) == 2  # a resume waits its turn too
    with rundir.locked(run):  # released at the end of the block
        pass


def test_lock_is_held_across_processes(tmp_path):
    """A lock held by another process (here: a child that sleeps holding it) refuses this one."""
    run = tmp_path / "run"
    code = ("import sys, time; from s5ssm import rundir\n"
            "with rundir.locked(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)\n")  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(rundir.RunDirBusy, match=f"process {child.pid}"):
            with rundir.locked(run):
                pass
    finally:
        child.kill()
        child.wait()
    with rundir.locked(run):  # the lock dies with its process
        pass


def test_directory_of_a_run_that_never_checkpointed_starts_afresh(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", *TINY, "--epochs", "1", "--checkpoint_every", "0", "--run_dir", str(run)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    crashing_cli = Path(__file__).resolve().parent / "helpers" / "crashing_cli.py"
    died = subprocess.run([sys.executable, crashing_cli, "step=3", *args], env=env, capture_output=True)
    assert died.returncode == -9 and steps_logged(run) == [1, 2, 3]  # killed before the epoch's checkpoint
    (run / "checkpoints" / "step-000000002").mkdir(parents=True)  # as a save cut short leaves it
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--resume", str(run)]) == 2
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stopped before its first checkpoint" in out and "metrics_steps.csv" in out
    assert steps_logged(run) == [1, 2, 3, 4]  # 60 training sequences at batch size 16, each step once
    assert (run / "notes.txt").read_text() == "mine"  # only the run's own files are removed
    assert not (run / "checkpoints" / "step-000000002").exists()


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    args = [*TINY, "--epochs", "2", "--checkpoint_every", "0"]
    assert main(["train", *args, "--run_dir", str(whole)]) == 0
    real_step = runlog.RunLog.step

    def step_then_ctrl_c(self, row):
        real_step(self, row)
        if row["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(runlog.RunLog, "step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when started in the background by a shell
    assert main(["train", *args, "--run_dir", str(stopped)]) == 130
    err = capsys.readouterr().err
    assert f"--resume {stopped}" in err and "step 3" in err
    assert checkpoint.load(stopped / "checkpoints")["progress"]["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) == before  # the handler is put back
    monkeypatch.undo()
    assert main(["train", "--resume", str(stopped)]) == 0
    results = [json.loads((r / "summary.json").read_text())["results"] for r in (whole, stopped)]
    assert results[0] == results[1]
    assert steps_logged(stopped) == list(range(1, 9))
