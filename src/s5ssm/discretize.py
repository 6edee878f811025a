"""Discretisation of the diagonal continuous-time system, elementwise per state.

For a continuous eigenvalue Λ_p and step Δ the discrete system is
    x_k = Λ̄ ⊙ x_{k-1} + γ ⊙ (B~ u_k)
so B̄ = γ[:, None] * B~ is never formed per step: a step that varies with time (or batch)
only changes the P-vector γ, and the cost stays O(B·L·P) beyond the B~u GEMM.

    zoh:       Λ̄ = exp(ΛΔ),                    γ = (Λ̄ - 1) / Λ
    bilinear:  Λ̄ = (1 + ΔΛ/2) / (1 - ΔΛ/2),    γ = Δ / (1 - ΔΛ/2)

A zero step (Δ = 0) gives Λ̄ = 1 and γ = 0 under both rules: the state passes through
unchanged. Masked steps of non-contiguous masks use exactly this.
"""

from __future__ import annotations

import torch

METHODS = ("zoh", "bilinear")


def _expm1_complex(z: torch.Tensor) -> torch.Tensor:
    """exp(z) - 1 without cancellation for small |z| (real ops, so any torch version)."""
    x, y = z.real, z.imag
    real = torch.expm1(x) * torch.cos(y) - 2 * torch.sin(y / 2) ** 2
    imag = torch.exp(x) * torch.sin(y)
    return torch.complex(real, imag)


def zoh(Lambda: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-order hold.

    Args:
        Lambda: complex (P,) continuous eigenvalues.
        delta: real (..., P) step sizes, broadcastable against Lambda.

    Returns:
        (lambda_bar, gamma), both complex (..., P).
    """
    z = Lambda * delta
    lambda_bar = torch.exp(z)
    # (exp(ΛΔ) - 1)/Λ written as Δ·expm1(z)/z would divide by z = 0 for masked steps;
    # expm1(z)/Λ is exact for Δ = 0 and free of cancellation for small Δ.
    gamma = _expm1_complex(z) / Lambda
    return lambda_bar, gamma


def bilinear(Lambda: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear (Tustin) transform. Shapes as in `zoh`."""
    half = (delta / 2) * Lambda
    inv = 1 / (1 - half)
    return inv * (1 + half), inv * delta


def step_sizes(log_step: torch.Tensor, step_scale: float | torch.Tensor | None) -> torch.Tensor:
    """Δ = step_scale · exp(log_step), shaped for the scan.

    Args:
        log_step: real (P,).
        step_scale: None or float -> Δ (P,); tensor (B,) -> (B, 1, P); tensor (B, L) -> (B, L, P).
    """
    step = torch.exp(log_step)
    if step_scale is None:
        return step
    if not isinstance(step_scale, torch.Tensor):
        return step * float(step_scale)
    if step_scale.dim() == 1:
        return step_scale[:, None, None].to(step.dtype) * step
    return step_scale[..., None].to(step.dtype) * step


def discretize(
    Lambda: torch.Tensor,
    log_step: torch.Tensor,
    method: str = "zoh",
    step_scale: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Λ̄ and γ for the given step scale (see `step_sizes` for the shapes)."""
    delta = step_sizes(log_step, step_scale)
    if method == "zoh":
        return zoh(Lambda, delta)
    if method == "bilinear":
        return bilinear(Lambda, delta)
    raise ValueError(f"discretization must be one of {METHODS}, got {method!r}")
