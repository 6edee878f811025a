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


# The most parameters a model may have: 2^31 float32 parameters are 8 GiB (more, with the
# optimizer's state). Sizes beyond are refused before anything is allocated.
MAX_PARAMETERS = 2**31


def expect_sizes(options: dict, required: Sequence[str], optional: Sequence[str] = ()) -> None:
    """Raise TypeError/ValueError naming the option unless each `required` option, and each
    `optional` one that is not None, is an int >= 1."""
    for name in (*required, *optional):
        value = options.get(name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def expect_parameter_budget(count: int, sizes: dict) -> None:
    """Raise ValueError, naming the `sizes` (option -> value; None ones left out), when a model
    of at least `count` parameters would exceed MAX_PARAMETERS."""
    if count > MAX_PARAMETERS:
        shown = ", ".join(f"{name}={value}" for name, value in sizes.items() if value is not None)
        raise ValueError(f"{shown}: the model would hold at least {count:,} parameters, more than the "
                         f"{MAX_PARAMETERS:,} (8 GiB of float32) s5ssm builds")  # fmt: skip
