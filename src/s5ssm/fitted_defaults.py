"""Training settings fitted to a user's data file (`s5ssm train --data`, the estimators).

Whole-sequence labels (classification, one regression target per sequence): a
bidirectional S5 stack read by mean pooling over the valid steps, standardised inputs;
for classification, steps encoded by FCN's three convolution blocks (encoder="fcn") and
augmented training batches (s5ssm.augment); for regression, steps encoded from a window
of 9 steps (encoder="window"),
a training budget of about TARGET_STEPS optimizer steps whatever the data's size, and
early stopping on the validation split. Per-step targets keep a causal model read at
every step. The values were chosen on holdouts of the training splits of public UEA/UCR
sets, never their test splits (benchmarks/ucr_screen.py, its results in
benchmarks/ucr_screen_results.jsonl; benchmarks/ucr.sh reports the test splits against
MiniRocket).

Every setting here is a default: an option given on the command line, in --config or
to an estimator wins.
"""

from __future__ import annotations

import math

from .augment import unfit_reason

# optimizer steps a run aims at: small sets get many epochs, large ones a few
TARGET_STEPS = 1000
MIN_EPOCHS, MAX_EPOCHS = 10, 400


def batch_size_for(train_size: int) -> int:
    """Batches of 16 below 500 training sequences (more steps per epoch), 32 above."""
    return 16 if train_size < 500 else 32


def for_data(info: dict, train_size: int, given: dict | None = None, model: str = "s5") -> dict:
    """The settings for a dataset described by `info` (kind, per_step, ...) with
    `train_size` training sequences (after the validation split), for `model` ("s5" or an
    RNN baseline, which takes no window encoder). Settings derived from others (epochs from
    the batch size, warmup and patience from the epochs) follow the values in `given` (what
    the user set) where there are any."""
    given = given or {}
    batch_size = int(given.get("batch_size") or min(batch_size_for(train_size), train_size))
    steps_per_epoch = math.ceil(train_size / batch_size)
    epochs = int(given.get("epochs") or min(max(math.ceil(TARGET_STEPS / steps_per_epoch), MIN_EPOCHS), MAX_EPOCHS))
    settings = {
        "standardize": True,
        "batch_size": batch_size,
        "epochs": epochs,
        "warmup_epochs": max(1, epochs // 20),
        "patience": max(10, epochs // 4),
        "hidden_size": 64,
        "state_size": 64,
        "num_layers": 4,
        "dropout": 0.1,
        "ssm_lr": 2e-3,
        "lr_factor": 1.0,
        "weight_decay": 0.05,
        "norm": "batch",
    }
    if info.get("per_step"):
        settings.update(bidirectional=False, pooling="none")
    else:
        # crops, scaling and mixup of training batches: classification only (not screened for regression)
        augment = info["kind"] == "classification" and unfit_reason(info, bool(info.get("timestamps"))) is None
        settings.update(bidirectional=True, pooling="mean", augment=augment)
        if model == "s5" and not info.get("vocab_size"):  # float inputs: local shapes for the first layer
            settings.update(encoder="fcn" if info["kind"] == "classification" else "window")
    return settings


def describe(chosen: dict, info: dict, train_size: int) -> str:
    """One line saying what was chosen for this data (only the settings actually applied)."""
    shown = ", ".join(f"{key}={value}" for key, value in chosen.items())
    what = "per-step targets" if info.get("per_step") else f"whole-sequence {info['kind']}"
    return f"defaults for {train_size} training sequences, {what}: {shown}"


def apply(cfg: dict, given: dict, data, log=print) -> dict:
    """cfg with the settings fitted to `data` (an s5ssm.training.data.Data) for every option not in
    `given` (what the user set); logs one line saying what was chosen."""
    train_size = len(data.splits["train"])
    chosen = {k: v for k, v in for_data(data.info, train_size, given, cfg["model"]).items() if k not in given}
    if chosen:
        log(describe(chosen, data.info, train_size))
    return {**cfg, **chosen}
