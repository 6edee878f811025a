"""Every training and model option with its built-in default and help (the command line,
config files and the estimators share them)."""

from __future__ import annotations

import inspect

from .model import S5Model

DEFAULT_TASK = "digits"
TRAIN_DEFAULTS = {
    "model": "s5", "task": None, "data": None, "test_data": None, "size": "default", "seed": 0,
    "epochs": 10, "batch_size": 32, "ssm_lr": 1e-3, "lr_factor": 1.0, "weight_decay": 0.05,
    "warmup_epochs": 1, "lr_min": 0.0, "grad_clip": 0.0, "opt_config": "standard", "dt_global": False,
    "device": "cpu", "checkpoint_every": 50, "quiet": False,
    "precision": "fp32", "standardize": True, "patience": 0, "val_fraction": 0.2,
    "augment": False, "ema": 0.0, "select_by": "metric",
}  # fmt: skip
TRAIN_HELP = {
    "model": "s5, or an lstm / gru baseline trained by the same harness",
    "task": "a built-in task (see `s5ssm tasks`)",
    "data": "a .ts or .npz training file (X_TRAIN.ts takes X_TEST.ts as its test split)",
    "test_data": "the test split's file",
    "size": "task size preset: default, tiny, or another the task defines",
    "ssm_lr": "learning rate of Λ, B, log Δ and the norms (no weight decay)",
    "lr_factor": "the other parameters train at lr_factor · ssm_lr with weight decay",
    "opt_config": "standard | BandCdecay | BfastandCdecay | noBCdecay (the paper's groupings)",
    "dt_global": "train log Δ with the other parameters at the global learning rate",
    "warmup_epochs": "linear warmup, then cosine decay to lr_min",
    "grad_clip": "clip the gradient norm to this value (0: off)",
    "checkpoint_every": "also checkpoint every this many steps inside an epoch (0: epochs only)",
    "quiet": "no progress bars",
    "precision": "fp32, or bf16: training steps under CUDA autocast (GEMMs in bfloat16, the scan in float32)",
    "standardize": "standardise inputs (and regression targets) per channel, fitted on the training split and "
                   "saved with the model (built-in tasks come normalised: off for them)",
    "patience": "stop when the validation metric has not improved for this many epochs (0: never)",
    "ema": "validate, checkpoint and predict with an exponential moving average of the weights, this decay "
           "per optimizer step (e.g. 0.99; 0: off)",
    "select_by": "the best checkpoint (and early stopping) by the validation metric (ties: lower loss), or by "
                 "the validation loss",
    "augment": "vary training batches of whole-sequence labels: random crops, channel scaling, mixup",
    "val_fraction": "share of a --data file's training sequences held out for validation (stratified by class)",
    "encoder": "linear; conv: a small CNN reads each step's features as a grayscale image; window: each step "
               "is encoded from a centred window of --encoder_width steps; fcn: FCN's three convolution blocks "
               "(widths --encoder_width, 5, 3; BatchNorm, ReLU) (window and fcn: whole sequences only)",
    "encoder_width": "steps of the window (odd) that --encoder window reads (fcn: its first block's)",
    "image_shape": "HEIGHTxWIDTH of the images for --encoder conv (e.g. 24x24; unset: square)",
}
MODEL_DEFAULTS = {
    name: p.default
    for name, p in inspect.signature(S5Model).parameters.items()
    if name not in ("embed_dim", "vocab_size", "output_dim", "window_size")
}
ALL_DEFAULTS = {**TRAIN_DEFAULTS, **MODEL_DEFAULTS}

