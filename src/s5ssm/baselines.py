"""LSTM and GRU baselines with S5Model's interface, for ablations in the same harness.

    x (B, L, embed_dim) float or (B, L) tokens -> encoder -> num_layers RNN -> pooling -> head

forward(x, *, mask=None, step_scale=None, resets=None): step_scale and resets have no
meaning for a plain RNN and are rejected when given; with right padding, "last" pooling
reads each sequence's last valid step (the RNN has not seen the padding there yet).
"""

from __future__ import annotations

import torch
from torch import nn

from ._checks import expect_bool_mask, expect_tensor

RNNS = {"lstm": nn.LSTM, "gru": nn.GRU}


class RNNModel(nn.Module):
    """A stacked LSTM or GRU with S5Model's encoder, pooling and head."""

    def __init__(
        self,
        cell: str,
        embed_dim: int | None = None,
        hidden_size: int = 128,
        num_layers: int = 2,
        dropout: float = 0.0,
        *,
        vocab_size: int | None = None,
        output_dim: int | None = None,
        pooling: str = "last",
    ) -> None:
        super().__init__()
        if cell not in RNNS:
            raise ValueError(f"cell must be one of {sorted(RNNS)}, got {cell!r}")
        if (embed_dim is None) == (vocab_size is None):
            raise ValueError("give exactly one of embed_dim and vocab_size")
        if pooling not in ("last", "mean", "none"):
            raise ValueError(f"pooling must be 'last', 'mean' or 'none', got {pooling!r}")
        self.config = dict(cell=cell, embed_dim=embed_dim, hidden_size=hidden_size, num_layers=num_layers,
                           dropout=dropout, vocab_size=vocab_size, output_dim=output_dim, pooling=pooling)  # fmt: skip
        self.pooling = pooling
        self.encoder = nn.Embedding(vocab_size, hidden_size) if vocab_size else nn.Linear(embed_dim, hidden_size)
        self.rnn = RNNS[cell](hidden_size, hidden_size, num_layers, batch_first=True,
                              dropout=dropout if num_layers > 1 else 0.0)  # fmt: skip
        self.head = nn.Linear(hidden_size, output_dim) if output_dim else None

    def forward(self, x: torch.Tensor, *, mask=None, step_scale=None, resets=None) -> torch.Tensor:
        """x: (B, L, embed_dim) or (B, L) tokens; mask bool (B, L). Returns (B, out) or (B, L, out)."""
        x = expect_tensor("x", x)
        if step_scale is not None or resets is not None:
            raise ValueError("step_scale/resets: an RNN baseline has no notion of time steps or resets")
        h, _ = self.rnn(self.encoder(x))
        if mask is not None:
            expect_bool_mask("mask", mask, x.shape[0], x.shape[1])
        if self.pooling == "mean":
            weights = torch.ones_like(h[..., :1]) if mask is None else mask[..., None].to(h.dtype)
            h = (h * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        elif self.pooling == "last":
            last = torch.full((h.shape[0],), h.shape[1] - 1, device=h.device) if mask is None else mask.sum(1) - 1
            h = h[torch.arange(h.shape[0], device=h.device), last.clamp(min=0)]
        return self.head(h) if self.head is not None else h

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
