"""s5ssm.averaging: the moving average against its formula, and what a training run does with it."""

import json

import pytest
import torch

from s5ssm import checkpoint
from s5ssm.averaging import WeightAverage, decay_at
from s5ssm.cli import main
from s5ssm.training.build import load_run

TINY = ["--task", "digits", "--size", "tiny", "--epochs", "2", "--batch_size", "16", "--hidden_size", "16",
        "--state_size", "8", "--blocks", "1", "--num_layers", "1", "--quiet"]  # fmt: skip


def test_the_average_follows_its_formula_in_float64():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2).double()
    average = WeightAverage(net, 0.9)
    expected = {name: p.detach().clone() for name, p in net.named_parameters()}
    for step in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        average.update(net, step)
        d = min(0.9, (1 + step) / (10 + step))
        for name, p in net.named_parameters():
            expected[name] = d * expected[name] + (1 - d) * p.detach()
    for name, value in expected.items():
        torch.testing.assert_close(average.weights[name], value, rtol=1e-12, atol=1e-12)
    assert decay_at(0, 0.9) == pytest.approx(0.1) and decay_at(1000, 0.9) == 0.9


def test_swapped_in_holds_the_average_and_restores_the_weights_exactly():
    net = torch.nn.Linear(4, 4)
    average = WeightAverage(net, 0.5)
    own = {name: p.detach().clone() for name, p in net.named_parameters()}
    average.weights = {name: value + 1.0 for name, value in own.items()}
    with average.swapped_in(net) as live:
        for name, p in net.named_parameters():
            assert torch.equal(p, own[name] + 1.0) and torch.equal(live[name], own[name])
    for name, p in net.named_parameters():
        assert torch.equal(p, own[name])


def test_decay_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="ema"):
        WeightAverage(torch.nn.Linear(2, 2), 1.0)
    with pytest.raises(SystemExit, match="--ema must be < 1"):
        main(["train", *TINY, "--ema", "1"])


def test_a_run_validates_saves_and_evaluates_the_average(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--ema", "0.9", "--run_dir", str(run)]) == 0
    state = checkpoint.load(run / "checkpoints", "last")
    assert state["live"].keys() == {n for n in state["model"] if n in state["live"]} and state["live"]
    # the model file holds the average, not the weights the optimizer moved
    assert any(not torch.equal(state["model"][name], value) for name, value in state["live"].items())
    # the evaluated model is the averaged one: its validation loss is the logged one
    _, model, data = load_run(run, "best")
    summary = json.loads((run / "summary.json").read_text())
    from s5ssm.training.evaluation import evaluate

    val = evaluate(model, data.splits["val"], data.info, 16, torch.device("cpu"))
    assert val["loss"] == pytest.approx(summary["results"]["val"]["loss"], rel=1e-6)
    rows = (run / "metrics_epochs.csv").read_text().splitlines()
    best_row = rows[1 + summary["best_epoch"]].split(",")
    assert float(best_row[3]) == pytest.approx(val["loss"], rel=1e-6)


def test_resuming_an_ema_run_without_its_live_weights_names_the_file(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--ema", "0.9", "--run_dir", str(run)]) == 0
    path = checkpoint.resolve(run / "checkpoints", "last") / "optimizer.safetensors"
    tensors = {name: value for name, value in load_file(str(path)).items() if not name.startswith("live.")}
    save_file(tensors, str(path))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) != 0
    assert f"{path}: no live." in capsys.readouterr().err
