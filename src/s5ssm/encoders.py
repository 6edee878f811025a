"""The input encoders of S5Model beyond Linear and Embedding (s5ssm.encoders.build_encoder).

encoder="window": each output step reads a centred window of `width` input steps,

    x (B, L, D) -> zero the masked steps -> Conv1d(D, H, width, zero padding width // 2)
      over time -> (B, L, H)

so the first S5 layer sees local shapes (slopes, peaks) that a Linear of one step cannot
show it. It reads width // 2 steps ahead: such a model runs on whole sequences only.

encoder="fcn": the three convolution blocks of FCN (Wang, Yan and Oates 2017, "Time series
classification from scratch with deep neural networks", a standard baseline of the UCR
archive), with odd widths so that each window is centred on its step:

    x (B, L, D) -> for width in (width, 5, 3):
        zero the masked steps -> Conv1d(width, zero padding width // 2) to H channels
        -> BatchNorm over the valid steps of the batch -> ReLU            -> (B, L, H)

It reads (width // 2) + 2 + 1 steps ahead, whole sequences only like "window".

encoder="conv": each step's features read as one image.

Every step's embed_dim = h·w features are a grayscale image of image_shape (h, w),
row-major, encoded on its own (so `S5Model.step` stays equal to `forward`):

    x (..., h·w) -> frames (N, 1, h, w), N = the product of the leading dims
      -> Conv2d 5×5, 12 channels, padding 2 -> ReLU -> MaxPool 2            (N, 12, h1, w1)
      -> Conv2d 3×3, 12 channels, stride 2, padding 1 -> ReLU -> MaxPool 2  (N, 12, h2, w2)
      -> flatten -> Linear(12·h2·w2, 30) -> ReLU -> Linear(30, H)           (..., H)

with h1 = h // 2, h2 = ceil(h1 / 2) // 2 (24 -> 12 -> 3; the same for w).

This is CRU's pendulum-regression encoder (Schirmer et al. 2022,
boschresearch/Continuous-Recurrent-Units lib/models.py, Pendulum_reg: layer norm off for
regression) with S5's last layer (lindermanlab/S5 s5/cru/util.py, CRN_CNN): a Linear to the
model width where CRU has its latent-observation mean and variance layers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .block import SequenceBatchNorm

ENCODERS = ("linear", "conv", "window", "fcn")
FCN_WIDTHS = (5, 3)  # the widths of FCN's second and third blocks (the first: encoder_width)
CHANNELS = 12  # both convolutions (CRU)
FEATURES = 30  # the hidden Linear layer (CRU)
CHUNK = 256  # frames per pass through the CNN (see ConvEncoder.forward)


def _pooled_side(n: int) -> int:
    """Side of the final feature map for an input side n (see the module docstring)."""
    return math.ceil((n // 2) / 2) // 2


def conv_image_shape(embed_dim: int, image_shape: Sequence[int] | None) -> tuple[int, int]:
    """The (h, w) a "conv" encoder reads: image_shape checked against embed_dim, or, when
    image_shape is None, the square one (embed_dim must be a perfect square)."""
    if image_shape is None:
        side = math.isqrt(embed_dim)
        if side * side != embed_dim:
            raise ValueError(
                f"encoder='conv' without image_shape reads square images, but embed_dim={embed_dim} "
                f"is not a square number; pass image_shape=(height, width)"
            )
        return side, side
    if (
        isinstance(image_shape, (str, bytes))
        or not isinstance(image_shape, Sequence)
        or len(image_shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) for n in image_shape)
    ):
        raise ValueError(f"image_shape must be a (height, width) pair of ints, got {image_shape!r}")
    h, w = image_shape
    if h * w != embed_dim:
        raise ValueError(
            f"image_shape=({h}, {w}) has {h * w} pixels, but embed_dim={embed_dim} (must equal height·width)"
        )
    return h, w


def build_encoder(
    kind: str, hidden_size: int, embed_dim: int | None, vocab_size: int | None, image_shape: Sequence[int] | None,
    width: int = 9,
) -> nn.Module:
    """The input encoder of S5Model and the RNN baselines, (B, L, embed_dim) or (B, L)
    tokens -> (B, L, hidden_size): Embedding(vocab_size) for tokens, else Linear(embed_dim)
    ("linear"), ConvEncoder ("conv"), WindowEncoder ("window", `width` steps) or FCNEncoder
    ("fcn", first width `width`). Exactly one of embed_dim and vocab_size."""
    if (embed_dim is None) == (vocab_size is None):
        raise ValueError(
            f"give exactly one of embed_dim (float inputs) and vocab_size (token inputs), "
            f"got embed_dim={embed_dim}, vocab_size={vocab_size}"
        )
    if kind not in ENCODERS:
        raise ValueError(f"encoder must be one of {ENCODERS}, got {kind!r}")
    if kind != "linear" and vocab_size is not None:
        raise ValueError(f"encoder={kind!r} reads float inputs (embed_dim), not tokens (vocab_size)")
    if image_shape is not None and kind != "conv":
        raise ValueError(f"image_shape is only used with encoder='conv', got image_shape={image_shape!r} "
                         f"with encoder={kind!r}")  # fmt: skip
    if vocab_size is not None:
        return nn.Embedding(vocab_size, hidden_size)
    if kind == "conv":
        return ConvEncoder(conv_image_shape(embed_dim, image_shape), hidden_size)
    if kind == "window":
        return WindowEncoder(embed_dim, hidden_size, width)
    if kind == "fcn":
        return FCNEncoder(embed_dim, hidden_size, width)
    return nn.Linear(embed_dim, hidden_size)


def _check_width(width: object) -> int:
    if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % 2 == 0:
        raise ValueError(f"encoder_width must be a positive odd int (a centred window), got {width!r}")
    return width


def _centred_conv(x: torch.Tensor, mask: torch.Tensor | None, conv: nn.Conv1d) -> torch.Tensor:
    """conv over time of x (B, L, C) with the masked steps read as zeros -> (B, L, C_out)."""
    if mask is not None:
        x = x * mask[..., None].to(x.dtype)
    return conv(x.transpose(1, 2)).transpose(1, 2)


class SequenceEncoder(nn.Module):
    """An encoder that reads a window around each step: called as encoder(x, mask) on whole
    sequences; `kind` names it and `look_ahead` says how many steps ahead it reads (a model
    with one has no step-by-step form)."""

    kind: str
    look_ahead: int


class WindowEncoder(SequenceEncoder):
    """Each step encoded from a centred window of `width` steps (module docstring).

    Args:
        embed_dim: D, the input features per step.
        hidden_size: H, the output width.
        width: steps each output reads, odd: width // 2 before the step, the step, and
            width // 2 after it (zeros beyond the sequence's ends and at masked steps).
    """

    kind = "window"

    def __init__(self, embed_dim: int, hidden_size: int, width: int) -> None:
        super().__init__()
        self.look_ahead = _check_width(width) // 2
        self.conv = nn.Conv1d(embed_dim, hidden_size, kernel_size=width, padding=width // 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), mask bool (B, L) or None -> (B, L, H); masked steps read as zeros."""
        return _centred_conv(x, mask, self.conv)


class FCNEncoder(SequenceEncoder):
    """FCN's three convolution blocks (module docstring), widths (width, 5, 3).

    Args:
        embed_dim: D, the input features per step.
        hidden_size: H, the channels of every block and the output width.
        width: the first block's window (odd).
    """

    kind = "fcn"

    def __init__(self, embed_dim: int, hidden_size: int, width: int) -> None:
        super().__init__()
        widths = (_check_width(width), *FCN_WIDTHS)
        self.look_ahead = sum(w // 2 for w in widths)
        sizes = (embed_dim,) + (hidden_size,) * len(widths)
        self.convs = nn.ModuleList(nn.Conv1d(n_in, n_out, kernel_size=w, padding=w // 2)
                                   for n_in, n_out, w in zip(sizes, sizes[1:], widths))  # fmt: skip
        self.norms = nn.ModuleList(SequenceBatchNorm(hidden_size) for _ in widths)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, D), mask bool (B, L) or None -> (B, L, H); masked steps read as zeros by
        every block and left out of the batch statistics."""
        h = x
        for conv, norm in zip(self.convs, self.norms):
            h = torch.relu(norm(_centred_conv(h, mask, conv), mask))
        return h


class ConvEncoder(nn.Module):
    """Per-frame CNN, (..., h·w) -> (..., hidden_size) (module docstring).

    Args:
        image_shape: (h, w) of each frame, both at least 6 (the smallest side the two
            stride-2 poolings and the stride-2 convolution leave a pixel of).
        hidden_size: H, the output width.
    """

    def __init__(self, image_shape: tuple[int, int], hidden_size: int) -> None:
        super().__init__()
        h, w = image_shape
        if min(_pooled_side(h), _pooled_side(w)) < 1:
            raise ValueError(f"image_shape: the conv encoder needs images of at least 6×6, got image_shape=({h}, {w})")
        self.image_shape = (h, w)
        self.net = nn.Sequential(
            nn.Conv2d(1, CHANNELS, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(CHANNELS, CHANNELS, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(CHANNELS * _pooled_side(h) * _pooled_side(w), FEATURES),
            nn.ReLU(),
            nn.Linear(FEATURES, hidden_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., h·w) -> (..., hidden_size); every index of the leading dims is one frame."""
        lead = x.shape[:-1]
        frames = x.reshape(math.prod(lead), 1, *self.image_shape)
        # CHUNK frames at a time keep the (CHUNK, 12, h, w) activations in cache: about
        # twice as fast on a CPU as all B·L frames at once, the same result
        out = torch.cat([self.net(chunk) for chunk in frames.split(CHUNK)])
        return out.reshape(*lead, self.net[-1].out_features)
