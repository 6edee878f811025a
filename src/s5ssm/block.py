"""S5Block: norm, S5SSM, activation / GLU, dropout, residual (the paper's SequenceLayer).

Follows lindermanlab/S5 s5/layers.py: pre- or post-norm, the activations gelu | full_glu |
half_glu1 | half_glu2, GELU in its tanh form (flax's default), dropout whose mask is shared
across time, and BatchNorm over batch and time with flax's momentum convention
(bn_momentum=0.95 keeps 95% of the running statistics). Defaults are the paper's:
prenorm, batch norm, half_glu1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import expect_bool_mask, expect_dtype, expect_finite, expect_shape, expect_tensor
from .precision import autocast_input
from .ssm import S5SSM

NORMS = ("batch", "layer", "rms")
ACTIVATIONS = ("gelu", "full_glu", "half_glu1", "half_glu2")


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learned scale. (..., H) -> (..., H)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm taking (and ignoring) the mask: it normalises each step on its own."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class SequenceBatchNorm(nn.BatchNorm1d):
    """BatchNorm over batch and time of (B, L, H) or (B, H); statistics skip masked steps."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None and self.training:
            out = torch.zeros_like(x)
            out[mask] = super().forward(x[mask])
            return out
        return super().forward(x.reshape(-1, x.shape[-1])).view_as(x)


def make_norm(norm: str, size: int, bn_momentum: float) -> nn.Module:
    if norm == "batch":
        return SequenceBatchNorm(size, momentum=1.0 - bn_momentum)
    if norm == "layer":
        return LayerNorm(size, eps=1e-6)  # flax.linen.LayerNorm's epsilon
    if norm == "rms":
        return RMSNorm(size)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def time_shared_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence and feature, shared across time. x: (B, L, H) or (B, H)."""
    if not training or p == 0.0:
        return x
    shape = (x.shape[0], 1, x.shape[-1]) if x.dim() == 3 else x.shape
    keep = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class S5Block(nn.Module):
    """One S5 layer with its norm, nonlinearity and residual. (B, L, H) -> (B, L, H).

    Args:
        hidden_size, state_size, blocks: as in S5SSM.
        norm: "batch" (over batch and time) | "layer" | "rms".
        prenorm: normalise before the SSM (True) or after the residual (False).
        activation: "gelu" | "full_glu" | "half_glu1" | "half_glu2".
        dropout: probability; the mask is shared across time.
        bn_momentum: flax convention, fraction of the running statistics kept per update.
        **ssm_options: passed to S5SSM (conj_sym, clip_eigs, bidirectional, discretization,
            C_init, dt_min, dt_max, step_rescale, scan_backend, generator).
    """

    def __init__(
        self,
        hidden_size: int,
        state_size: int,
        blocks: int = 1,
        *,
        norm: str = "batch",
        prenorm: bool = True,
        activation: str = "half_glu1",
        dropout: float = 0.0,
        bn_momentum: float = 0.95,
        **ssm_options,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not 0.0 <= bn_momentum <= 1.0:  # a fraction of the running statistics kept
            raise ValueError(f"bn_momentum must be in [0, 1], got {bn_momentum}")
        self.prenorm = prenorm
        self.activation = activation
        self.dropout = dropout
        self.norm = make_norm(norm, hidden_size, bn_momentum)
        self.ssm = S5SSM(hidden_size, state_size, blocks, **ssm_options)
        if activation == "full_glu":
            self.out1 = nn.Linear(hidden_size, hidden_size)
        if activation in ("full_glu", "half_glu1", "half_glu2"):
            self.out2 = nn.Linear(hidden_size, hidden_size)

    def _mix(self, x: torch.Tensor) -> torch.Tensor:
        """The activation / GLU with its dropouts, as in the paper's SequenceLayer."""
        drop = lambda t: time_shared_dropout(t, self.dropout, self.training)  # noqa: E731
        act = drop(F.gelu(x, approximate="tanh"))
        if self.activation == "gelu":
            return act
        if self.activation == "full_glu":
            x = self.out1(act) * torch.sigmoid(self.out2(act))
        elif self.activation == "half_glu1":
            x = act * torch.sigmoid(self.out2(act))
        else:  # half_glu2: GELU only on the gate's input
            x = x * torch.sigmoid(self.out2(act))
        return drop(x)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        step_scale: float | torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
        state: torch.Tensor | None = None,
        return_state: bool = False,
    ):
        """x: real (B, L, H). Other arguments as in S5SSM.forward. Returns y (B, L, H) [, state]."""
        # the norm runs before the SSM's own checks: check what it reads here
        x = autocast_input(expect_tensor("x", x), self.ssm.D.dtype)
        expect_dtype("x", x, self.ssm.D.dtype)
        expect_shape("x", x, (None, None, self.ssm.hidden_size), "BLH")
        expect_finite("x", x)  # else the norm turns Inf into NaN and the SSM blames "u"
        if mask is not None:
            expect_bool_mask("mask", mask, x.shape[0], x.shape[1])
        skip = x
        if self.prenorm:
            x = self.norm(x, mask)
        out = self.ssm(x, step_scale=step_scale, mask=mask, resets=resets, state=state, return_state=return_state)
        x, new_state = out if return_state else (out, None)
        x = skip + self._mix(x)
        if not self.prenorm:
            x = self.norm(x, mask)
        return (x, new_state) if return_state else x

    def step(
        self,
        x_k: torch.Tensor,
        state: torch.Tensor | None = None,
        *,
        step_scale: float | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x_k real (B, H), state complex (B, P) -> (y_k (B, H), state).

        Equals `forward` at that position in eval mode (BatchNorm then uses running
        statistics; a training-mode BatchNorm cannot be computed one step at a time).
        """
        self.check_streamable()
        x_k, state, step_scale = self.ssm.check_step_inputs(x_k, state, step_scale, name="x_k")
        return self.recur(x_k, state, step_scale)

    def check_streamable(self) -> None:
        if isinstance(self.norm, SequenceBatchNorm) and self.training:
            raise RuntimeError("step: BatchNorm needs running statistics, call .eval() first")

    def recur(
        self, x_k: torch.Tensor, state: torch.Tensor, step_scale: float | torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` without the argument checks, for callers that have made them."""
        skip = x_k
        if self.prenorm:
            x_k = self.norm(x_k)
        y, state = self.ssm.recur(x_k, state, step_scale)
        y = skip + self._mix(y)
        if not self.prenorm:
            y = self.norm(y)
        return y, state
