"""The linear scan x_k = Λ̄_k ⊙ x_{k-1} + (B̄u)_k behind one signature, several backends.

Backends (`backend=`):
    "cpu"        compiled numba kernels with a fused reverse-scan backward (cpu.py)
    "parallel"   work-efficient associative scan in torch ops, any device (parallel.py)
    "reference"  the plain sequential loop every other backend is tested against
    "triton"     Triton kernels for CUDA tensors (triton_scan.py; needs the `gpu` extra):
                 a chunked scan with a decoupled look-back and its reverse-scan backward
    "auto"       "cpu" for CPU tensors, "triton" for CUDA tensors when triton is installed,
                 "parallel" elsewhere (the default)

The default for "auto" can be changed process-wide with the environment variable
S5SSM_SCAN_BACKEND (e.g. S5SSM_SCAN_BACKEND=parallel), or per layer with
S5SSM(scan_backend=...).

The S5 layer's whole core (discretise, project, scan, project, on every backend) is one
operation beside these: core.s5_core, with its torch reference core.s5_core_reference.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable

import torch

from .._checks import expect_bool_mask, expect_dtype, expect_finite, expect_same_device, expect_shape, expect_tensor
from . import cpu, parallel, reference

BACKENDS = ("auto", "cpu", "parallel", "reference", "triton")
COMPLEX = (torch.complex64, torch.complex128)


_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # looked up, not imported


def triton_installed() -> bool:
    """Whether the triton package can be imported."""
    return _TRITON_INSTALLED


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend that `backend` stands for on `device`."""
    if backend == "auto":
        backend = os.environ.get("S5SSM_SCAN_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            return "cpu"
        return "triton" if device.type == "cuda" and triton_installed() else "parallel"
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"backend 'cpu' needs CPU tensors, got tensors on {device}")
    if backend == "triton":
        if not triton_installed():
            raise ValueError("backend 'triton' needs the triton package: pip install 's5ssm[gpu]'")
        from .triton_chunks import runs_on

        if not runs_on(device):
            raise ValueError(f"backend 'triton' needs CUDA tensors (CPU tensors only in Triton's interpreter, "
                             f"TRITON_INTERPRET=1), got tensors on {device}")  # fmt: skip
    return backend


def _scan_function(backend: str) -> Callable:
    """The scan function of a resolved backend (triton's imported on first use)."""
    if backend == "triton":
        from . import triton_scan

        return triton_scan.scan
    return {"cpu": cpu.scan, "parallel": parallel.scan, "reference": reference.scan}[backend]


def _check(lambda_bar, bu, initial_state, resets) -> None:
    bu = expect_tensor("bu", bu)
    expect_dtype("bu", bu, COMPLEX)
    expect_shape("bu", bu, (None, None, None), "BLP")
    batch, length, size = bu.shape
    lambda_bar = expect_tensor("lambda_bar", lambda_bar)
    expect_dtype("lambda_bar", lambda_bar, bu.dtype)
    expect_same_device("lambda_bar", lambda_bar, bu)
    if lambda_bar.dim() == 1:
        expect_shape("lambda_bar", lambda_bar, (size,), "P")
    else:
        expect_shape("lambda_bar", lambda_bar, (None, None, size), "BLP")
        if lambda_bar.shape[0] not in (1, batch) or lambda_bar.shape[1] not in (1, length):
            raise ValueError(
                f"lambda_bar must have shape [P], [1|B, 1|L, P] with B={batch}, L={length}, "
                f"P={size}, got {list(lambda_bar.shape)}"
            )
    if initial_state is not None:
        expect_tensor("initial_state", initial_state)
        expect_dtype("initial_state", initial_state, bu.dtype)
        expect_shape("initial_state", initial_state, (batch, size), "BP")
        expect_same_device("initial_state", initial_state, bu)
        expect_finite("initial_state", initial_state)  # (B, P): cheap
    if resets is not None:
        expect_bool_mask("resets", resets, batch, length)
        expect_same_device("resets", resets, bu)


def linear_scan(
    lambda_bar: torch.Tensor,
    bu: torch.Tensor,
    *,
    initial_state: torch.Tensor | None = None,
    reverse: bool = False,
    resets: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
):
    """Run x_k = lambda_bar_k * x_{k-1} + bu_k over time (reverse: x_k = lambda_bar_k * x_{k+1} + bu_k).

    Args:
        lambda_bar: complex64/128 (P,) time-invariant, (B|1, 1, P) per sequence, or
            (B|1, L, P) time-varying.
        bu: complex (B, L, P), same dtype and device.
        initial_state: complex (B, P): x_{-1} (x_L in reverse); zeros if None.
        reverse: scan from the last step to the first.
        resets: bool (B, L): clear the carried state before step k (episode starts).
        return_final_state: also return the state after the last step processed
            (x_{L-1}, or x_0 in reverse), complex (B, P).
        backend: "auto" | "cpu" | "parallel" | "reference" | "triton" (module docstring).

    Returns:
        states complex (B, L, P), or (states, final_state).
    """
    _check(lambda_bar, bu, initial_state, resets)
    states = _scan_function(resolve_backend(backend, bu.device))(lambda_bar, bu, initial_state, reverse, resets)
    if return_final_state:
        return states, states[:, 0 if reverse else -1]
    return states


__all__ = ["linear_scan", "resolve_backend", "BACKENDS"]
