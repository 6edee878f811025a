"""S5Model: encoder, a stack of S5Blocks, pooling and an optional head.

    x (B, L, embed_dim) float, or (B, L) int64 tokens with vocab_size
      -> encoder (Linear, Embedding, a CNN, or convolutions over time)  (B, L, H)
      -> num_layers × S5Block                      (B, L, H)
      -> pooling: "last" | "mean" (mask-aware) | "none"
      -> head Linear(H, output_dim) if output_dim  (B, output_size) or (B, L, output_size)

`init_cache` / `step` run the whole stack one step at a time in O(1) per step; each
output equals the full model run on the prefix (in eval mode).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._checks import (
    expect_bool_mask,
    expect_dtype,
    expect_finite,
    expect_parameter_budget,
    expect_same_device,
    expect_shape,
    expect_sizes,
    expect_tensor,
)
from .block import S5Block
from .data.scaling import StandardizedIO
from .encoders import SequenceEncoder, build_encoder
from .io import atomic_write_text, load_safetensors, save_safetensors
from .streaming import CompiledStep, StreamCache, compiled_step_for

POOLINGS = ("last", "mean", "none")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def recommended_defaults() -> dict:
    """S5Model settings for real-time, frame-by-frame processing (e.g. 60 fps control loops).

    - norm="layer": per-frame normalisation, identical in training, batch inference and
      `step` (BatchNorm's batch statistics differ between training and streaming).
    - clip_eigs=True: Re Λ <= -1e-4 keeps every mode decaying on unbounded streams.
    - unidirectional, conj_sym, zoh: what `step` supports, at half the state work.
    - hidden_size=128, state_size=64 in 4 blocks, 4 layers: `s5ssm bench` measures the
      per-frame `step` latency of exactly this configuration at batch 1.
    - dt_min/dt_max: the paper's 0.001..0.1, i.e. timescales of 10..1000 frames
      (0.17 s to 17 s at 60 fps).
    Pass embed_dim (and output_dim for a head) yourself: S5Model(embed_dim=..., **recommended_defaults()).
    """
    return dict(
        hidden_size=128,
        state_size=64,
        blocks=4,
        num_layers=4,
        dropout=0.1,
        norm="layer",
        prenorm=True,
        activation="half_glu1",
        conj_sym=True,
        clip_eigs=True,
        bidirectional=False,
        discretization="zoh",
        dt_min=0.001,
        dt_max=0.1,
        pooling="last",
    )


SIZE_OPTIONS = ("hidden_size", "state_size", "num_layers", "blocks", "embed_dim", "vocab_size", "output_dim",
                "window_size")  # fmt: skip


def check_sizes(options: dict) -> None:
    """Raise TypeError/ValueError naming the option unless the S5Model sizes in `options` are
    positive integers (embed_dim, vocab_size, output_dim, window_size may be None) whose model
    holds at most MAX_PARAMETERS parameters (a lower bound is counted: per layer B~ and C~,
    2·P·H, and the GLU's H·H; the encoder's and the head's weights)."""
    expect_sizes(options, SIZE_OPTIONS[:4], SIZE_OPTIONS[4:])
    hidden, state = options["hidden_size"], options["state_size"]
    ends = ((options.get("vocab_size") or options.get("embed_dim") or 0) + (options.get("output_dim") or 0)) * hidden
    count = options["num_layers"] * (2 * state * hidden + hidden * hidden) + ends
    expect_parameter_budget(count, {n: options.get(n) for n in SIZE_OPTIONS[:7]})


class S5Model(StandardizedIO, nn.Module):
    """A stack of S5 blocks with an encoder, pooling and an optional head.

    Args:
        embed_dim: input features per step (for float inputs (B, L, embed_dim)).
        hidden_size: H, the width of every block.
        state_size: full state size of each S5SSM (P_full; P_full/2 kept with conj_sym).
        num_layers: number of S5 blocks.
        dropout: dropout probability inside the blocks (mask shared across time).
        window_size: longest sequence the model accepts (None: any length). Lets code
            written for fixed frame windows state its window; streaming with `step`
            needs no window at all.
        vocab_size: use an Embedding(vocab_size, H) encoder for int64 token inputs (B, L)
            instead of a Linear encoder (then leave embed_dim None).
        encoder: "linear" (Linear(embed_dim, H), or the Embedding for tokens), "conv":
            each step's embed_dim features are a grayscale image, row-major, read by CRU's
            small CNN (s5ssm.encoders.ConvEncoder), one frame at a time, "window":
            each step encoded from a centred window of encoder_width steps
            (s5ssm.encoders.WindowEncoder), or "fcn": FCN's three convolution blocks
            (s5ssm.encoders.FCNEncoder). window and fcn: whole sequences only, no `step`.
        encoder_width: the window's steps (odd) with encoder="window", the first block's
            with "fcn"; unused otherwise.
        image_shape: (height, width) of those images, height·width = embed_dim; None
            reads square ones (sqrt(embed_dim) a side). Only with encoder="conv".
        output_dim: add a Linear(H, output_dim) head (logits or regression outputs).
        pooling: "last" (last valid step), "mean" (over valid steps) or "none" (every step);
            with "last" and "mean" a sequence whose mask has no valid step pools to zeros.
        blocks, norm, prenorm, activation, bn_momentum: as in S5Block.
        conj_sym, clip_eigs, bidirectional, discretization, C_init, dt_min, dt_max,
        step_rescale, scan_backend: as in S5SSM.
        standardize_inputs: standardise each input feature by a mean and std held as
            buffers (`input_scaling`, a Standardize; identity until fitted, e.g. by the
            trainer on the training split). Float inputs only.
        standardize_outputs: the head predicts standardised targets and the model returns
            them in the data's units through `output_scaling` (regression). Needs output_dim.
    """

    def __init__(
        self,
        embed_dim: int | None = None,
        hidden_size: int = 128,
        state_size: int = 256,
        num_layers: int = 6,
        dropout: float = 0.0,
        window_size: int | None = None,
        *,
        vocab_size: int | None = None,
        encoder: str = "linear",
        encoder_width: int = 9,
        image_shape: tuple[int, int] | None = None,
        output_dim: int | None = None,
        pooling: str = "last",
        blocks: int = 1,
        norm: str = "batch",
        prenorm: bool = True,
        activation: str = "half_glu1",
        bn_momentum: float = 0.95,
        conj_sym: bool = True,
        clip_eigs: bool = False,
        bidirectional: bool = False,
        discretization: str = "zoh",
        C_init: str = "trunc_standard_normal",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        step_rescale: float = 1.0,
        scan_backend: str = "auto",
        standardize_inputs: bool = False,
        standardize_outputs: bool = False,
    ) -> None:
        super().__init__()
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        check_sizes(self.config)
        self.encoder = build_encoder(encoder, hidden_size, embed_dim, vocab_size, image_shape, encoder_width)
        if image_shape is not None:  # a tuple, whether given as one or read back from config.json as a list
            self.config["image_shape"] = tuple(image_shape)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.embed_dim = embed_dim
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.window_size = window_size
        self.pooling = pooling
        self.bidirectional = bidirectional
        block_options = dict(
            norm=norm, prenorm=prenorm, activation=activation, dropout=dropout, bn_momentum=bn_momentum,
            conj_sym=conj_sym, clip_eigs=clip_eigs, bidirectional=bidirectional,
            discretization=discretization, C_init=C_init, dt_min=dt_min, dt_max=dt_max,
            step_rescale=step_rescale, scan_backend=scan_backend,
        )  # fmt: skip
        self.layers = nn.ModuleList(
            S5Block(hidden_size, state_size, blocks, **block_options) for _ in range(num_layers)
        )
        self.head = nn.Linear(hidden_size, output_dim) if output_dim is not None else None
        self._init_scaling(standardize_inputs, standardize_outputs, embed_dim, vocab_size, output_dim)

    @property
    def output_size(self) -> int:
        """Features of the output: output_dim with a head, hidden_size without."""
        return self.head.out_features if self.head is not None else self.hidden_size

    def param_count(self) -> int:
        """Number of scalar parameters (the sum of every parameter's numel)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ inputs
    def _check_inputs(self, x, mask, name="x", stepping=False, finite=True):
        """Check x (B, L[, D]) for `forward`, or x_t (B[, D]) for `step` (stepping=True);
        finite=False leaves the NaN/Inf check to the caller."""
        x = expect_tensor(name, x)
        lead, labels = ((None,), "B") if stepping else ((None, None), "BL")
        if self.vocab_size is not None:
            expect_dtype(name, x, (torch.int64, torch.int32))
            expect_shape(name, x, lead, labels)
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.vocab_size):
                raise ValueError(f"{name}: token ids must be in [0, {self.vocab_size}), got [{int(x.min())}, {int(x.max())}]")
        else:
            expect_dtype(name, x, self.layers[0].ssm.D.dtype)
            expect_shape(name, x, lead + (self.embed_dim,), labels + "D")
            if finite:
                expect_finite(name, x)
        if not stepping and (x.shape[0] == 0 or x.shape[1] == 0):  # else the first layer would name its own input
            raise ValueError(f"{name} must have at least one sequence of length >= 1, got {list(x.shape)}")
        if not stepping and self.window_size is not None and x.shape[1] > self.window_size:
            raise ValueError(f"x: sequence length {x.shape[1]} exceeds window_size={self.window_size}")
        if mask is not None:
            expect_bool_mask("mask", mask, x.shape[0], x.shape[1])
        return x

    def _pool(self, h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, H) -> (B, H) for "last"/"mean", unchanged for "none"."""
        if self.pooling == "none":
            return h
        if self.pooling == "mean":
            if mask is None:
                return h.mean(dim=1)
            weights = mask.to(h.dtype)[..., None]
            return (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        if mask is None:
            return h[:, -1]
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = torch.where(mask, positions, torch.zeros_like(positions)).amax(dim=1)
        # a row with no valid step pools to zeros (as "mean" does), not to a padded step's output
        return h[torch.arange(h.shape[0], device=h.device), last] * mask.any(dim=1, keepdim=True).to(h.dtype)

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        step_scale: float | torch.Tensor | None = None,
        resets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the model on whole sequences.

        Args:
            x: float (B, L, embed_dim), or int64 (B, L) token ids with vocab_size.
            mask: bool (B, L), True at valid steps (variable-length batches).
            step_scale: float, (B,) or (B, L) (irregular sampling), as in S5SSM.
            resets: bool (B, L), clear every layer's state before these steps.

        Returns:
            (B, output_size) with pooling "last"/"mean", (B, L, output_size) with "none".
        """
        x = self._check_inputs(x, mask)
        x = self._scale_in(x)
        h = self.encoder(x, mask) if isinstance(self.encoder, SequenceEncoder) else self.encoder(x)
        for layer in self.layers:
            h = layer(h, mask=mask, step_scale=step_scale, resets=resets)
        h = self._pool(h, mask)
        return self._scale_out(self.head(h)) if self.head is not None else h

    # ------------------------------------------------------------------ streaming
    def _check_streamable(self, where: str) -> None:
        """Raise ValueError unless every output step depends on past and present inputs only."""
        if self.bidirectional:
            raise ValueError(f"{where}: a bidirectional model cannot run step by step")
        if isinstance(self.encoder, SequenceEncoder):
            raise ValueError(f"{where}: encoder={self.encoder.kind!r} reads {self.encoder.look_ahead} steps ahead; "
                             f"a model with it cannot run step by step")  # fmt: skip

    def init_cache(self, batch_size: int) -> "StreamCache":
        """The streaming state before the first step: per-layer S5 states and pooling sums."""
        self._check_streamable("init_cache")
        first = self.layers[0].ssm
        states = [layer.ssm.init_state(batch_size) for layer in self.layers]
        stacked = torch.stack(states) if len({s.shape for s in states}) == 1 else None
        return StreamCache(
            states=tuple(stacked.unbind(0)) if stacked is not None else tuple(states),
            sum=torch.zeros(batch_size, self.hidden_size, dtype=first.D.dtype, device=first.D.device),
            count=0,
            stacked=stacked,
        )

    def step(
        self, x_t: torch.Tensor, cache: dict, *, step_scale: float | torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict]:
        """One frame through the whole stack in O(1).

        Args:
            x_t: float (B, embed_dim), or int64 (B,) token ids.
            cache: from `init_cache` or the previous `step` (not modified).
            step_scale: float or (B,): the time elapsed since the previous frame, in steps.

        Returns:
            (y_t, cache): y_t is what `forward` returns for the sequence so far
            ((B, output_size); with pooling "none", the output at this step).

        For inference on the CPU (eval mode, under torch.inference_mode / torch.no_grad,
        float32/float64, scan backend "auto" or "cpu") the frame runs as one compiled call
        (s5ssm.streaming); otherwise, and as the reference, in torch ops.
        """
        self._check_streamable("step")
        compiled = self._compiled_step(x_t)
        if compiled is not None:
            return self._step_compiled(compiled, x_t, cache, step_scale)
        x_t = self._check_inputs(x_t, None, "x_t", stepping=True)
        step_scale = self._check_cache(cache, x_t.shape[0], step_scale)
        h = self.encoder(self._scale_in(x_t))
        states = []
        for layer, state in zip(self.layers, cache["states"]):
            h, state = layer.recur(h, state, step_scale)
            states.append(state)
        total, count = cache["sum"] + h, cache["count"] + 1
        pooled = total / count if self.pooling == "mean" else h
        out = self._scale_out(self.head(pooled)) if self.head is not None else pooled
        return out, StreamCache(states=tuple(states), sum=total, count=count)

    def _compiled_step(self, x_t: object) -> CompiledStep | None:
        """The compiled step if this frame can use it: CPU, no gradient wanted, supported model."""
        if not isinstance(x_t, torch.Tensor) or x_t.device.type != "cpu":
            return None
        if torch.is_grad_enabled() and (x_t.requires_grad or any(p.requires_grad for p in self.parameters())):
            return None
        return compiled_step_for(self)

    def _step_compiled(self, compiled: CompiledStep, x_t: torch.Tensor, cache: dict, step_scale):
        """`step` through the compiled kernel (s5ssm.streaming); same checks, same result."""
        x_t = self._check_inputs(x_t, None, "x_t", stepping=True, finite=not compiled.encode_in_kernel)
        batch = x_t.shape[0]
        stacked = compiled.trusted_states(cache, batch)
        if stacked is None:
            step_scale = self._check_cache(cache, batch, step_scale)
            stacked = torch.stack(cache["states"])
        elif step_scale is not None:
            step_scale = self.layers[0].ssm._check_step_scale(step_scale, batch, None)
        scales = compiled.step_scales(step_scale, batch)
        x_t = self._scale_in(x_t)
        frame = x_t.contiguous() if compiled.encode_in_kernel else self.encoder(x_t).contiguous()
        result = compiled(frame, stacked, cache["sum"].contiguous(), cache["count"], scales)
        if result is None:
            where = "x_t" if compiled.encode_in_kernel else "the encoder's output"
            raise ValueError(f"{where} contains NaN or Inf values")
        out, states, total = result
        return self._scale_out(out), StreamCache(states=states.unbind(0), sum=total, count=cache["count"] + 1, stacked=states)

    def _check_cache(self, cache: object, batch: int, step_scale):
        """Validate a streaming cache (structure, shapes, dtypes) and the step_scale; returns step_scale."""
        if not isinstance(cache, dict) or not {"states", "sum", "count"} <= cache.keys():
            raise TypeError("cache must be the dict returned by init_cache() or step()")
        states, layers = cache["states"], self.layers
        if not isinstance(states, (list, tuple)):
            raise TypeError(f"cache['states'] must be a list of layer states, got {type(states).__name__}")
        if len(states) != len(layers):
            raise ValueError(f"cache: expected {len(layers)} layer states, got {len(states)}")
        for i, (layer, state) in enumerate(zip(layers, states)):
            layer.check_streamable()
            name = f"cache['states'][{i}]"
            expect_tensor(name, state)
            expect_dtype(name, state, layer.ssm.complex_dtype)
            expect_shape(name, state, (batch, layer.ssm.num_states), "BP")
            expect_same_device(name, state, layer.ssm.D)
            if not isinstance(cache, StreamCache):  # states that `step` computed are finite
                expect_finite(name, state)
        first = layers[0].ssm
        total = expect_tensor("cache['sum']", cache["sum"])
        expect_dtype("cache['sum']", total, first.D.dtype)
        expect_same_device("cache['sum']", total, first.D)
        expect_shape("cache['sum']", total, (batch, self.hidden_size), "BH")
        count = cache["count"]
        if isinstance(count, bool) or not isinstance(count, int):
            raise TypeError(f"cache['count'] must be an int, got {type(count).__name__} {count!r}")
        if count < 0:
            raise ValueError(f"cache['count'] must be >= 0, got {count}")
        return first._check_step_scale(step_scale, batch, None)

    # ------------------------------------------------------------------ files
    def save_pretrained(self, directory: str | Path) -> None:
        """Write config.json and model.safetensors (both atomically) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.state_dict(), directory / WEIGHTS_NAME)
        atomic_write_text(directory / CONFIG_NAME, json.dumps(self.config, indent=2, sort_keys=True))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "S5Model":
        """Rebuild a model saved by `save_pretrained` (no pickle involved)."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path}: no {CONFIG_NAME} (not a save_pretrained directory)")
        try:
            config = json.loads(config_path.read_text())
            if not isinstance(config, dict):
                raise TypeError(f"expected an object of S5Model options, got {type(config).__name__}")
            model = cls(**config)
        except (TypeError, ValueError) as exc:  # a bad value names its option (sizes are checked before allocating)
            raise (TypeError if isinstance(exc, TypeError) else ValueError)(f"{config_path}: {exc}") from None
        weights = load_safetensors(directory / WEIGHTS_NAME, device=map_location)
        # keep the saved precision (load_state_dict would cast into the default dtype)
        dtypes = {t.dtype for t in weights.values() if t.is_floating_point()}
        if len(dtypes) == 1:
            model = model.to(dtypes.pop())
        model.load_state_dict(weights)
        return model.to(map_location)
