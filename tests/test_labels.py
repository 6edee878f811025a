"""Class labels across files: the training split's vocabulary applies to every other split,
to eval and to predict; every split's inputs are checked before training starts."""

import csv
import json

import numpy as np
import pytest

from s5ssm.cli import main
from s5ssm.data import DataFormatError, SequenceDataset, load_file
from s5ssm.data.labels import class_names, conform
from s5ssm.training.data import load_data

SMALL = ["--epochs", "1", "--hidden_size", "8", "--state_size", "4", "--num_layers", "1", "--batch_size", "8",
         "--quiet"]  # fmt: skip


def write_ts(path, classes, cases, dims=1):
    """A .ts file declaring `classes` in that order; cases: [(label, length)], values rise for 'a'."""
    lines = ["@problemName toy", "@univariate " + ("true" if dims == 1 else "false"), f"@dimensions {dims}",
             "@equalLength false", "@classLabel true " + " ".join(classes), "@data"]  # fmt: skip
    for k, (label, length) in enumerate(cases):
        sign = 1.0 if label == "a" else -1.0
        dim = ",".join(f"{sign * (j + k % 3):.1f}" for j in range(length))
        lines.append(":".join([dim] * dims) + f":{label}")
    path.write_text("\n".join(lines) + "\n")


def cases(n, labels=("a", "b")):
    return [(labels[k % len(labels)], 4 + k % 3) for k in range(n)]


def test_ts_test_file_with_reversed_class_order_keeps_the_training_names(tmp_path):
    write_ts(tmp_path / "X_TRAIN.ts", ["a", "b"], cases(20))
    write_ts(tmp_path / "X_TEST.ts", ["b", "a"], cases(6))
    data = load_data({"data": str(tmp_path / "X_TRAIN.ts"), "seed": 0})
    names = class_names(data.info)
    assert names == ["a", "b"]
    # the test cases alternate a, b, a, ...: read by name in the training numbering
    assert [names[k] for k in data.splits["test"].targets] == ["a", "b"] * 3


def test_npz_test_file_with_one_of_the_training_classes(tmp_path):
    x = np.zeros((20, 3, 2), np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=np.array(["a", "b"] * 10))
    np.savez(tmp_path / "test.npz", x=x[:2], y=np.array(["b", "b"]))
    data = load_data({"data": str(tmp_path / "train.npz"), "test_data": str(tmp_path / "test.npz"), "seed": 0})
    assert data.splits["test"].targets.tolist() == [1, 1]


def test_npz_integer_labels_are_mapped_by_value(tmp_path):
    x = np.zeros((30, 3, 1), np.float32)
    np.savez(tmp_path / "train.npz", x=x, y=np.array([3, 7, 10**12] * 10))
    np.savez(tmp_path / "test.npz", x=x[:2], y=np.array([7, 10**12]))
    ds, info = load_file(tmp_path / "train.npz")  # a label of 10^12 is a name, not 10^12 outputs
    assert info["num_classes"] == 3 and class_names(info) == ["3", "7", str(10**12)]
    data = load_data({"data": str(tmp_path / "train.npz"), "test_data": str(tmp_path / "test.npz"), "seed": 0})
    assert data.splits["test"].targets.tolist() == [1, 2]


def test_unseen_test_class_is_refused_before_training(tmp_path, capsys):
    write_ts(tmp_path / "X_TRAIN.ts", ["a", "b"], cases(20))
    write_ts(tmp_path / "X_TEST.ts", ["a", "b", "c"], cases(6, ("a", "c")))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "X_TRAIN.ts"), *SMALL, "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "X_TEST.ts" in err and "'c'" in err
    assert not (run / "metrics_steps.csv").exists()  # refused before the first step


def test_test_file_with_other_feature_count_is_refused_before_training(tmp_path, capsys):
    write_ts(tmp_path / "X_TRAIN.ts", ["a", "b"], cases(20))
    write_ts(tmp_path / "other.ts", ["a", "b"], cases(6), dims=2)
    run = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "X_TRAIN.ts"), "--test_data", str(tmp_path / "other.ts")]
    assert main([*args, *SMALL, "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "other.ts" in err and "2 features" in err and "1" in err
    assert not (run / "metrics_steps.csv").exists()


@pytest.mark.parametrize("case", ["tokens for features", "token beyond vocabulary", "regression for classes",
                                  "target width"])  # fmt: skip
def test_conform_refuses_splits_that_do_not_fit(case):
    floats = SequenceDataset([np.zeros((3, 2), np.float32)], np.array([0]))
    train_info = {"kind": "classification", "class_names": ["a"], "num_classes": 1, "input_dim": 2,
                  "vocab_size": None, "per_step": False, "output_dim": 1}  # fmt: skip
    info = dict(train_info)
    if case == "tokens for features":
        dataset, words = SequenceDataset([np.array([1, 2])], np.array([0])), ["integer token ids", "D=2"]
    elif case == "token beyond vocabulary":
        train_info.update(input_dim=None, vocab_size=5)
        dataset, words = SequenceDataset([np.array([1, 7])], np.array([0])), ["token id 7", "vocab_size 5"]
    elif case == "regression for classes":
        dataset, words = SequenceDataset(floats.inputs, np.zeros((1, 1), np.float32)), ["regression", "classification"]
        info["kind"] = "regression"
    else:
        train_info.update(kind="regression", output_dim=2, class_names=None, num_classes=None)
        dataset, words = SequenceDataset(floats.inputs, np.zeros((1, 3), np.float32)), ["3 target values", "2"]
        info = dict(train_info)
    with pytest.raises(DataFormatError) as err:
        conform(dataset, info, train_info, "split.npz")
    for word in ["split.npz", *words]:
        assert word in str(err.value)


def test_eval_and_predict_use_the_training_names(tmp_path, capsys):
    write_ts(tmp_path / "X_TRAIN.ts", ["a", "b"], cases(24))
    write_ts(tmp_path / "X_TEST.ts", ["b", "a"], cases(6))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "X_TRAIN.ts"), *SMALL, "--run_dir", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert main(["eval", str(run)]) == 0  # eval reads the test file in the training numbering too
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["accuracy"] == summary["results"]["test"]["accuracy"]
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run), "--data", str(tmp_path / "X_TEST.ts"), "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["index", "prediction", "p_a", "p_b"] and len(rows) == 7
    for row in rows[1:]:
        p_a, p_b = float(row[2]), float(row[3])
        assert row[1] == ("a" if p_a >= p_b else "b")
    assert main(["predict", str(run), "--data", str(tmp_path / "X_TEST.ts"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--out {tmp_path}" in err and "is a directory" in err
    # predict refuses inputs the model cannot read, naming the file
    np.savez(tmp_path / "tokens.npz", x=np.ones((2, 4), np.int64))
    assert main(["predict", str(run), "--data", str(tmp_path / "tokens.npz"), "--out", str(out)]) == 2
    assert "tokens.npz" in capsys.readouterr().err


def test_a_changed_training_file_cannot_rename_the_runs_classes(tmp_path, capsys):
    """classes.json keeps the names the model was trained on: eval, predict and --resume
    refuse a training file whose classes have changed since, naming classes.json."""
    write_ts(tmp_path / "X_TRAIN.ts", ["a", "b"], cases(24))
    write_ts(tmp_path / "X_TEST.ts", ["a", "b"], cases(6))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "X_TRAIN.ts"), *SMALL, "--run_dir", str(run)]) == 0
    assert json.loads((run / "classes.json").read_text()) == ["a", "b"]
    write_ts(tmp_path / "X_TRAIN.ts", ["b", "c"], cases(24, ("b", "c")))  # the file replaced after training
    write_ts(tmp_path / "X_TEST.ts", ["b", "c"], cases(6, ("b", "c")))
    capsys.readouterr()
    for command in (["eval", str(run)], ["train", "--resume", str(run), "--epochs", "2"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "classes.json" in err and "['a', 'b']" in err and "['b', 'c']" in err, err
