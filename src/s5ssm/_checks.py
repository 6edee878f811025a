"""Argument checks shared by the public entry points: clear errors that name the argument."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def _fmt(shape: Sequence[int | None], names: str) -> str:
    dims = [f"{n}={s}" if s is not None else n for n, s in zip(names, shape)]
    return "[" + ", ".join(dims) + "]"


def expect_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def expect_shape(name: str, tensor: torch.Tensor, shape: Sequence[int | None], names: str) -> None:
    """Raise ValueError unless `tensor` has len(shape) dims matching `shape` (None = any size).

    `names` labels the dims, e.g. "BLH" gives "expected [B, L, H=16]".
    """
    ok = tensor.dim() == len(shape) and all(
        want is None or got == want for got, want in zip(tensor.shape, shape)
    )
    if not ok:
        raise ValueError(
            f"{name} must have shape {_fmt(shape, names)}, got {list(tensor.shape)}"
        )


def expect_dtype(name: str, tensor: torch.Tensor, allowed: Sequence[torch.dtype] | torch.dtype) -> None:
    allowed = (allowed,) if isinstance(allowed, torch.dtype) else tuple(allowed)
    if tensor.dtype not in allowed:
        wanted = " or ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype {wanted}, got {str(tensor.dtype).replace('torch.', '')}")


def expect_same_device(name: str, tensor: torch.Tensor, reference: torch.Tensor) -> None:
    if tensor.device != reference.device:
        raise ValueError(f"{name} is on {tensor.device}, expected {reference.device}")


def is_compiling() -> bool:
    """Whether torch.compile is tracing the code that calls this."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def checks_enabled() -> bool:
    """Data-dependent checks (NaN, sign) are skipped while torch.compile traces."""
    return not is_compiling()


def expect_finite(name: str, tensor: torch.Tensor) -> None:
    """Raise ValueError on any NaN or ±Inf, in one pass (aminmax propagates NaN); a complex
    tensor is checked through its real and imaginary parts."""
    if checks_enabled() and tensor.numel():
        if tensor.is_complex():
            tensor = torch.view_as_real(tensor.resolve_conj())
        low, high = torch.aminmax(tensor.detach())
        if not (math.isfinite(low.item()) and math.isfinite(high.item())):  # 2 scalars: no more tensor ops
            raise ValueError(f"{name} contains NaN or Inf values")


def expect_bool_mask(name: str, tensor: object, batch: int, length: int) -> torch.Tensor:
    tensor = expect_tensor(name, tensor)
    expect_dtype(name, tensor, torch.bool)
    expect_shape(name, tensor, (batch, length), "BL")
    return tensor
