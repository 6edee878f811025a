"""The model of a run: built from its configuration, its scaling fitted to the training
split, or loaded with its weights from a trained run directory."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import checkpoint, settings
from ..baselines import RNNModel
from ..data import SequenceDataset
from ..model import S5Model
from .data import Data, check_classes, load_data


def build_model(cfg: dict, info: dict) -> torch.nn.Module:
    """The model cfg names for data described by info; standardisation (cfg["standardize"])
    of float inputs, and of the targets of a regression, starts as the identity: see fit_scaling."""
    tokens = bool(info.get("vocab_size"))
    inputs = {"vocab_size": info["vocab_size"]} if tokens else {"embed_dim": info["input_dim"]}
    pooling = "none" if info.get("per_step") else cfg["pooling"]
    standardize = bool(cfg.get("standardize"))
    inputs["standardize_inputs"] = standardize and not tokens
    inputs["standardize_outputs"] = standardize and info["kind"] == "regression"
    if cfg["model"] == "s5":
        # a run directory written before an option existed leaves it to S5Model's default
        options = {k: cfg[k] for k in S5_OPTIONS if k in cfg}
        options["pooling"] = pooling
        return S5Model(**inputs, output_dim=info["output_dim"], **options)
    encoder = {k: cfg[k] for k in ("encoder", "image_shape") if k in cfg}
    return RNNModel(cfg["model"], **inputs, hidden_size=cfg["hidden_size"], num_layers=cfg["num_layers"],
                    dropout=cfg["dropout"], output_dim=info["output_dim"], pooling=pooling,
                    time_input=bool(info.get("timestamps")), **encoder)  # fmt: skip


S5_OPTIONS = (
    "hidden_size", "state_size", "num_layers", "dropout", "pooling", "encoder", "encoder_width", "image_shape",
    "blocks", "norm", "prenorm", "activation", "bn_momentum", "conj_sym", "clip_eigs", "bidirectional",
    "discretization", "C_init", "dt_min", "dt_max", "step_rescale", "scan_backend",
)  # fmt: skip


def fit_scaling(net: torch.nn.Module, train: SequenceDataset) -> None:
    """Fit the model's input and output standardisation (where enabled) on the training
    split: every valid step of every sequence, per-step targets at valid steps only."""
    if getattr(net, "input_scaling", None) is not None:
        net.input_scaling.fit(train.inputs)
    if getattr(net, "output_scaling", None) is not None:
        targets = train.targets
        if targets.ndim == 3:  # per step: (N, L_T, T), valid up to each sequence's length
            net.output_scaling.fit(y[:length] for y, length in zip(targets, train.lengths))
        else:
            net.output_scaling.fit([targets])


def target_std(net: torch.nn.Module) -> torch.Tensor | None:
    """The std (T,) a model's regression outputs are standardised by, or None."""
    scaling = getattr(net, "output_scaling", None)
    return scaling.std if scaling is not None else None


def load_run(run_dir: str | Path, which: str = "best", defaults: dict | None = None) -> tuple[dict, torch.nn.Module, Data]:
    """(config, model with the `which` checkpoint's weights, data) of a run directory.

    config.yaml is validated (s5ssm.settings.read_run_config; `defaults`: the known
    options and their types)."""
    run_dir = Path(run_dir)
    cfg = settings.read_run_config(run_dir, defaults)
    data = load_data(cfg)
    if data.info["kind"] == "classification":
        check_classes(run_dir, data.info)
    model = build_model(cfg, data.info)
    ckpt_dir = run_dir / "checkpoints"
    checkpoint.restore(model, checkpoint.load_model(ckpt_dir, which), ckpt_dir, which)
    return cfg, model.eval(), data
