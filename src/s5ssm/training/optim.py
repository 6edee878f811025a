"""The optimiser of a run: the paper's parameter groups and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from ..settings import OPT_CONFIGS


def parameter_groups(model: torch.nn.Module, cfg: dict) -> list[dict]:
    """The paper's optimiser groups (lindermanlab/S5 train_helpers.create_train_state).

    "ssm":     Adam at ssm_lr, no weight decay: Λ, log Δ (unless dt_global), norms, and
               B (standard, noBCdecay), C and D (noBCdecay)
    "ssm_wd":  AdamW at ssm_lr with weight decay: B (BandCdecay)
    "regular": AdamW at lr = lr_factor·ssm_lr with weight decay: everything else
    """
    opt = cfg["opt_config"]
    if opt not in OPT_CONFIGS:
        raise ValueError(f"opt_config must be one of {OPT_CONFIGS}, got {opt!r}")
    ssm = {"Lambda_re", "Lambda_im"} | (set() if cfg["dt_global"] else {"log_step"})
    if opt in ("standard", "noBCdecay"):
        ssm.add("B")
    if opt == "noBCdecay":
        ssm |= {"C", "C1", "C2", "D"}
    ssm_wd = {"B"} if opt == "BandCdecay" else set()
    groups: dict[str, list] = {"ssm": [], "ssm_wd": [], "regular": []}
    for name, param in model.named_parameters():
        parts = name.split(".")
        leaf = parts[-1]
        in_ssm = len(parts) > 1 and parts[-2] == "ssm"
        if (in_ssm and leaf in ssm) or ".norm." in f".{name}":
            groups["ssm"].append(param)
        elif in_ssm and leaf in ssm_wd:
            groups["ssm_wd"].append(param)
        else:
            groups["regular"].append(param)
    ssm_lr, lr, wd = cfg["ssm_lr"], cfg["ssm_lr"] * cfg["lr_factor"], cfg["weight_decay"]
    spec = {"ssm": (ssm_lr, 0.0), "ssm_wd": (ssm_lr, wd), "regular": (lr, wd)}
    return [
        {"params": params, "lr": spec[name][0], "base_lr": spec[name][0], "weight_decay": spec[name][1], "name": name}
        for name, params in groups.items()
        if params
    ]


def lr_factor_at(step: int, warmup_steps: int, total_steps: int, base: float, lr_min: float) -> float:
    """Linear warmup from 0 over warmup_steps, then cosine decay from base to lr_min."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return lr_min + (base - lr_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

