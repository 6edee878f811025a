"""Mixed precision: `s5ssm train --precision bf16|fp32`, and activations that autocast
lowered on their way into an S5 layer.

bf16 runs each training step's forward under torch.autocast("cuda", dtype=torch.bfloat16):
the GEMMs (the S5 projections B~u and C~x, the encoder, the GLU, the head) run in
bfloat16, the scan in float32 (complex64, as the paper's JAX code scans): S5SSM takes the
input projection's output back to its own dtype before the scan. Evaluation runs in
float32. Autocast is used on CUDA only.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def check_precision(precision: object, device: str | torch.device) -> None:
    """Raise ValueError unless `precision` is one of PRECISIONS and can run on `device`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16" and str(device).split(":")[0] != "cuda":
        raise ValueError(f"precision bf16 trains under CUDA autocast: it needs a cuda device, got {device}")


def autocast_enabled(device_type: str) -> bool:
    """Whether torch.autocast is on for `device_type` ("cpu", "cuda") in this thread."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - torch < 2.4 takes no device type
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def autocast_input(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in `dtype` when autocast is on and x is in a lower floating precision (an autocast
    GEMM's output, e.g. the encoder's, entering a layer that keeps `dtype`); else x."""
    lower = x.is_floating_point() and x.dtype.itemsize < torch.finfo(dtype).bits // 8
    return x.to(dtype) if lower and autocast_enabled(x.device.type) else x


class Autocast(nn.Module):
    """`module`'s forward under torch.autocast(device_type, dtype); an output in `dtype`
    (the head's GEMM) is returned in float32, for the loss."""

    def __init__(self, module: nn.Module, device_type: str, dtype: torch.dtype) -> None:
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *args, **kwargs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.module(*args, **kwargs)
        return out.float() if out.dtype == self.dtype else out


def for_training(model: nn.Module, precision: str, device: torch.device) -> nn.Module:
    """The module a training step calls: `model` itself for fp32, under bf16 autocast for bf16."""
    check_precision(precision, device)
    return model if precision == "fp32" else Autocast(model, "cuda", torch.bfloat16)
