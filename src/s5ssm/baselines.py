"""LSTM and GRU baselines with S5Model's interface, for ablations in the same harness.

    x (B, L, embed_dim) float or (B, L) tokens -> encoder -> num_layers RNN -> pooling -> head

forward(x, *, mask=None, step_scale=None, resets=None): resets have no meaning for a plain
RNN and are rejected. step_scale (B, L), the time since the previous step, is an extra RNN
input when the model is built with time_input=True (irregular sampling: the usual RNN
baseline, GRU-Δt in the CRU paper) and rejected otherwise. With right padding, "last"
pooling reads each sequence's last valid step (the RNN has not seen the padding there yet).
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import expect_bool_mask, expect_parameter_budget, expect_shape, expect_sizes, expect_tensor
from .data.scaling import StandardizedIO
from .encoders import build_encoder

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNModel(StandardizedIO, nn.Module):
    """A stacked LSTM or GRU with S5Model's encoder ("linear" or "conv", Embedding for
    tokens; s5ssm.encoders), pooling and head."""

    def __init__(
        self,
        cell: str,
        embed_dim: int | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.0,
        *,
        vocab_size: int | None = None,
        encoder: str = "linear",
        image_shape: tuple[int, int] | None = None,
        output_dim: int | None = None,
        pooling: str = "last",
        time_input: bool = False,
        standardize_inputs: bool = False,
        standardize_outputs: bool = False,
    ) -> None:
        super().__init__()
        if cell not in RNNS:
            raise ValueError(f"cell must be one of {sorted(RNNS)}, got {cell!r}")
        if pooling not in ("last", "mean", "none"):
            raise ValueError(f"pooling must be 'last', 'mean' or 'none', got {pooling!r}")
        sizes = dict(hidden_size=hidden_size, num_layers=num_layers, embed_dim=embed_dim, vocab_size=vocab_size,
                     output_dim=output_dim)  # fmt: skip
        expect_sizes(sizes, ("hidden_size", "num_layers"), ("embed_dim", "vocab_size", "output_dim"))
        # a lower bound: each layer's gates (4 for an LSTM, 3 for a GRU) read and write H, the encoder and head
        ends = ((vocab_size or embed_dim or 0) + (output_dim or 0)) * hidden_size
        expect_parameter_budget(num_layers * (3 if cell == "gru" else 4) * 2 * hidden_size**2 + ends, sizes)
        self.config = dict(cell=cell, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers,
                           dropout=dropout, vocab_size=vocab_size, encoder=encoder, image_shape=image_shape,
                           output_dim=output_dim, pooling=pooling, time_input=time_input,
                           standardize_inputs=standardize_inputs, standardize_outputs=standardize_outputs)  # fmt: skip
        self.pooling = pooling
        self.time_input = time_input
        if encoder in ("window", "fcn"):  # an RNN reads its inputs in order; a centred window would read ahead
            raise ValueError(f"encoder={encoder!r} is for S5 models; the {cell} baseline takes 'linear' or 'conv'")
        self.encoder = build_encoder(encoder, hidden_size, embed_dim, vocab_size, image_shape)
        self.rnn = RNNS[cell](hidden_size + int(time_input), hidden_size, num_layers, batch_first=True,
                              dropout=dropout if num_layers > 1 else 0.0)  # fmt: skip
        self.head = nn.Linear(hidden_size, output_dim) if output_dim else None
        self._init_scaling(standardize_inputs, standardize_outputs, embed_dim, vocab_size, output_dim)

    def forward(self, x: torch.Tensor, *, mask=None, step_scale=None, resets=None) -> torch.Tensor:
        """x: (B, L, embed_dim) or (B, L) tokens; mask bool (B, L). Returns (B, out) or (B, L, out)."""
        x = expect_tensor("x", x)
        if resets is not None:
            raise ValueError("resets: an RNN baseline has no notion of resets")
        h = self.encoder(self._scale_in(x))
        if self.time_input:
            if step_scale is None:
                raise ValueError("step_scale: an RNN built with time_input=True needs the time since the previous step (B, L)")
            step_scale = expect_tensor("step_scale", step_scale)
            expect_shape("step_scale", step_scale, x.shape[:2], "BL")
            h = torch.cat([h, step_scale.to(h.dtype)[..., None]], dim=-1)
        elif step_scale is not None:
            raise ValueError("step_scale: this RNN baseline was built without time_input, so it has no use for time steps")
        h, _ = self.rnn(h)
        if mask is not None:
            expect_bool_mask("mask", mask, x.shape[0], x.shape[1])
        if self.pooling == "mean":
            weights = torch.ones_like(h[..., :1]) if mask is None else mask[..., None].to(h.dtype)
            h = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        elif self.pooling == "last":
            last = torch.full((h.shape[0],), h.shape[1] - 1, device=h.device) if mask is None else mask.sum(1) - 1
            h = h[torch.arange(h.shape[0], device=h.device), last.clamp(min=0)]
        return self._scale_out(self.head(h)) if self.head is not None else h

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
