"""Export a trained S5Model for runtimes outside Python: ONNX (onnxruntime, C++) and torch.export.

    export(model_or_dir, format="onnx" | "pt2", what="step" | "sequence", out=PATH, quantize=None | "int8")

Both graphs are built in plain, real-valued torch ops from the model's own parameters and
modules (norms, GLU, encoder, head, input/output standardisation), discretised once at
export time with the layer's own rule (s5ssm.discretize through `S5SSM.discretized`):

- what="step": one frame through the whole stack (the reference is `S5Model.step` in
  torch ops). Inputs ``x`` float32 (B, embed_dim) (int64 (B,) token ids with vocab_size)
  and one state per layer, ``state_in_0`` .. ``state_in_{N-1}``, float32 (B, P, 2): the
  complex state as (real, imag) pairs. Outputs ``y`` (B, output_size) and ``state_out_i``
  of the same layout, to be fed back as ``state_in_i`` at the next frame. A model with
  pooling="mean" also carries ``pool_sum_in`` (B, H) and ``pool_count_in`` (B, 1), the
  running sum of the last block's outputs and the number of frames seen. The state before
  the first frame is all zeros (every input but ``x``). B is dynamic.
- what="sequence": the model's `forward` over ``x`` (B, L, embed_dim) (int64 (B, L)
  tokens) with ``mask`` bool (B, L), True at valid steps; B and L are dynamic. Masked
  steps are steps of length zero (Λ̄ = 1, B̄u = 0, output 0), as in `S5SSM.forward`.

The recurrence of the sequence graph is an exact sequential scan (torch's `scan` higher
order op; an ONNX ``Scan`` node), carrying the (B, P, 2) state step by step: the same
arithmetic as the step, so exact to float32 rounding over any length, with no powers
Λ̄^k that would under- or overflow. Only the complex multiply-add runs inside the loop;
the norms, projections and GLU run on the whole (B, L, ·) sequence.

The layout, the zero-state initialiser and the model's options are written into the file:
ONNX ``metadata_props`` (keys ``s5ssm.*``), and ``s5ssm.json`` in the .pt2 archive's
extra files. The .pt2 archive holds no pickle (JSON graph, raw weight bytes, no example
inputs), so `torch.export.load` unpickles nothing.

What the graphs cannot express is refused with a ValueError naming it: `step` of a
bidirectional model, a per-step step_scale input (irregular sampling), an RNN baseline,
a model that is not float32.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .block import LayerNorm, RMSNorm, S5Block, SequenceBatchNorm
from .encoders import ConvEncoder, FCNEncoder, SequenceEncoder, WindowEncoder
from .io import atomic_write_bytes
from .model import CONFIG_NAME, S5Model

FORMATS = ("onnx", "pt2")
WHATS = ("step", "sequence")
QUANTIZE = (None, "int8")
METADATA_FILE = "s5ssm.json"  # the .pt2 archive's extra file holding the metadata
OPSET = 18
_EXAMPLE_BATCH, _EXAMPLE_LENGTH = 2, 5  # export traces at these sizes (>= 2: not specialised to 1)


# ---------------------------------------------------------------------------- the layer in real ops
class RealSSM(nn.Module):
    """An S5SSM discretised once, as real tensors: the complex state is a (..., P, 2) pair.

    Buffers: lambda_bar (P, 2) = Λ̄; w_in (2P, H) = B̄ with interleaved (re, im) rows;
    w_out (directions, H, 2P) = Re(C~ ·) (·2 with conj_sym); D (H,).
    """

    def __init__(self, ssm: nn.Module) -> None:
        super().__init__()
        with torch.no_grad():
            lambda_bar, gamma = ssm.discretized(None)  # the layer's rule, clip_eigs and step_rescale
            self.register_buffer("lambda_bar", torch.view_as_real(lambda_bar).clone())
            self.register_buffer("w_in", ssm._input_weight(gamma).clone())
            self.register_buffer("w_out", torch.stack(ssm._output_weights()).clone())
            self.register_buffer("D", ssm.D.detach().clone())
        self.num_states = ssm.num_states
        self.bidirectional = ssm.bidirectional

    def project_in(self, u: torch.Tensor) -> torch.Tensor:
        """B̄u: (..., H) -> (..., P, 2)."""
        return F.linear(u, self.w_in).unflatten(-1, (self.num_states, 2))

    def project_out(self, states: list[torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        """Σ_directions Re(C~ x) + D ⊙ u: states (..., P, 2) per direction, u (..., H) -> (..., H)."""
        y = u * self.D
        for direction, x in enumerate(states):
            y = y + F.linear(x.flatten(-2), self.w_out[direction])
        return y


def complex_multiply_add(a: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a ⊙ x + b for complex numbers held as (..., 2) (real, imag) pairs (broadcasting)."""
    re = a[..., 0] * x[..., 0] - a[..., 1] * x[..., 1] + b[..., 0]
    im = a[..., 0] * x[..., 1] + a[..., 1] * x[..., 0] + b[..., 1]
    return torch.stack([re, im], dim=-1)


def masked_scan(lambda_bar: torch.Tensor, bu: torch.Tensor, valid: torch.Tensor, reverse: bool) -> torch.Tensor:
    """x_k = Λ̄_k ⊙ x_{k-1} + B̄u_k from x = 0, with Λ̄_k = Λ̄ at valid steps and 1 at masked ones.

    Args:
        lambda_bar: (P, 2). bu: (B, L, P, 2), zero at masked steps. valid: float (B, L), 1 or 0.
        reverse: run from the last step to the first (the backward direction).

    Returns:
        (B, L, P, 2), the state after every step.
    """
    from torch._higher_order_ops.scan import scan  # a prototype of recent torch: imported on use only

    steps = bu.transpose(0, 1)  # (L, B, P, 2): scan runs over the leading dim
    keep = valid.transpose(0, 1)[:, :, None, None]  # (L, B, 1, 1)

    change = torch.stack([lambda_bar[:, 0] - 1.0, lambda_bar[:, 1]], dim=-1)  # Λ̄ - 1, (P, 2)

    def one_step(state, inputs):
        bu_k, keep_k = inputs
        decay = keep_k * change  # Λ̄ - 1 at a valid step, 0 at a masked one
        decay = torch.stack([decay[..., 0] + 1.0, decay[..., 1]], dim=-1)  # Λ̄ or 1
        new = complex_multiply_add(decay, state, bu_k)
        return new, new.clone()  # scan's outputs may not alias its carry

    _, states = scan(one_step, torch.zeros_like(steps[0]), (steps, keep), reverse=reverse)
    return states.transpose(0, 1)


def _residual(block: S5Block, x: torch.Tensor, ssm) -> torch.Tensor:
    """S5Block around `ssm` (normalised input -> SSM output), in eval mode: norm, residual, GLU."""
    skip = x
    if block.prenorm:
        x = block.norm(x)
    x = skip + block._mix(ssm(x))
    return block.norm(x) if not block.prenorm else x


class _Graph(nn.Module):
    """What both graphs share: the encoder with the input scaling, the layers, the head with
    the output scaling. Takes over `model` (a copy made for it): each block's S5SSM is
    replaced by its RealSSM, so the graph holds the discretised weights only."""

    def __init__(self, model: S5Model) -> None:
        super().__init__()
        for block in model.layers:
            block.ssm = RealSSM(block.ssm)
        self.model = model.requires_grad_(False)  # torch's scan exports for inference only

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw inputs (..., embed_dim) or token ids (...) -> (..., H); mask (B, L) for the
        window encoder (whole sequences only)."""
        x = self.model._scale_in(x)
        encoder = self.model.encoder
        if isinstance(encoder, ConvEncoder):  # every frame at once (ConvEncoder.forward chunks them)
            frames = encoder.net(x.reshape(-1, 1, *encoder.image_shape))
            return frames.reshape(*x.shape[:-1], frames.shape[-1])
        if isinstance(encoder, SequenceEncoder):
            return encoder(x, mask)
        return encoder(x)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """The head and the output scaling: (..., H) -> (..., output_size) in the data's units."""
        head = self.model.head
        return self.model._scale_out(head(h)) if head is not None else h


class StepGraph(_Graph):
    """One frame through the whole stack (module docstring: inputs, outputs, zero state)."""

    def forward(self, x: torch.Tensor, *carried: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, D) or (B,) int64; carried: state_in_i (B, P, 2) per layer [, pool_sum (B, H),
        pool_count (B, 1)]. Returns (y (B, output_size), state_out_i ... [, pool_sum, pool_count])."""
        h = self.encode(x)
        states = []
        for block, state in zip(self.model.layers, carried):

            def recur(u, ssm=block.ssm, state=state):
                new = complex_multiply_add(ssm.lambda_bar, state, ssm.project_in(u))
                states.append(new)
                return ssm.project_out([new], u)

            h = _residual(block, h, recur)
        if self.model.pooling != "mean":
            return (self.decode(h), *states)
        total, count = carried[-2] + h, carried[-1] + 1.0
        return (self.decode(total / count), *states, total, count)


class SequenceGraph(_Graph):
    """The model's forward over whole sequences with a padding mask (module docstring)."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) or (B, L) int64; mask bool (B, L). Returns (B, output_size), or
        (B, L, output_size) with pooling "none"."""
        valid = mask.to(self.model.layers[0].ssm.D.dtype)
        h = self.encode(x, mask)
        for block in self.model.layers:

            def whole(u, ssm=block.ssm):
                bu = ssm.project_in(u) * valid[:, :, None, None]
                states = [masked_scan(ssm.lambda_bar, bu, valid, reverse=False)]
                if ssm.bidirectional:
                    states.append(masked_scan(ssm.lambda_bar, bu, valid, reverse=True))
                return ssm.project_out(states, u) * valid[..., None]

            h = _residual(block, h, whole)
        return self.decode(self.model._pool(h, mask))


# ---------------------------------------------------------------------------- checks
def check_exportable(model: nn.Module, what: str) -> None:
    """Raise ValueError naming what the graph of `what` cannot express for this model."""
    if not isinstance(model, S5Model):
        raise ValueError(f"model: only S5Model exports, got {type(model).__name__} (an RNN baseline run?)")
    if what not in WHATS:
        raise ValueError(f"what must be one of {WHATS}, got {what!r}")
    if what == "step" and model.bidirectional:
        raise ValueError("what='step': a bidirectional model has no step (its backward direction needs the "
                         "whole sequence); export what='sequence'")  # fmt: skip
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    if dtypes != {torch.float32}:
        raise ValueError(f"dtype: export writes float32 graphs, the model holds {sorted(map(str, dtypes))}; "
                         "convert it with model.float() first")  # fmt: skip
    encoder = model.encoder
    if type(encoder) not in (nn.Linear, nn.Embedding, ConvEncoder, WindowEncoder, FCNEncoder):
        raise ValueError(f"encoder: {type(encoder).__name__} is not exportable (Linear, Embedding, ConvEncoder, "
                         f"WindowEncoder or FCNEncoder)")  # fmt: skip
    if what == "step" and isinstance(encoder, SequenceEncoder):
        raise ValueError(f"what='step': encoder={encoder.kind!r} reads {encoder.look_ahead} steps ahead, so the "
                         f"model has no step; export what='sequence'")  # fmt: skip
    if model.head is not None and type(model.head) is not nn.Linear:
        raise ValueError(f"head: {type(model.head).__name__} is not exportable (an nn.Linear)")
    for i, block in enumerate(model.layers):
        if type(block.norm) not in (LayerNorm, RMSNorm, SequenceBatchNorm):
            raise ValueError(f"layers[{i}].norm: {type(block.norm).__name__} is not exportable")


def _input_example(model: S5Model, lead: tuple[int, ...]) -> torch.Tensor:
    """A random input of leading shape `lead`: token ids or float features."""
    if model.vocab_size is not None:
        return torch.randint(0, model.vocab_size, lead)
    return torch.randn(*lead, model.embed_dim)


def carried(model: S5Model) -> list[tuple[str, str, tuple[int, ...]]]:
    """The step graph's carried tensors in input order: (input name, output name, shape
    without the batch dim); all float32, all zero before the first frame."""
    states = [(f"state_in_{i}", f"state_out_{i}", (block.ssm.num_states, 2)) for i, block in enumerate(model.layers)]
    if model.pooling == "mean":  # the running sum and count of the last block's outputs
        states += [("pool_sum_in", "pool_sum_out", (model.hidden_size,)), ("pool_count_in", "pool_count_out", (1,))]
    return states


def _signature(model: S5Model, what: str) -> tuple[tuple, dict, list[str], list[str]]:
    """(example args, dynamic shapes, input names, output names) of the graph."""
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    if what == "sequence":
        x = _input_example(model, (_EXAMPLE_BATCH, _EXAMPLE_LENGTH))
        mask = torch.ones(_EXAMPLE_BATCH, _EXAMPLE_LENGTH, dtype=torch.bool)
        return (x, mask), {"x": {0: batch, 1: length}, "mask": {0: batch, 1: length}}, ["x", "mask"], ["y"]
    states = carried(model)
    args = (_input_example(model, (_EXAMPLE_BATCH,)), *(torch.zeros(_EXAMPLE_BATCH, *shape) for *_, shape in states))
    dynamic = {"x": {0: batch}, "carried": tuple({0: batch} for _ in states)}
    return args, dynamic, ["x"] + [name for name, _, _ in states], ["y"] + [name for _, name, _ in states]


def metadata(model: S5Model, what: str, inputs: list[str], outputs: list[str], quantize: str | None) -> dict[str, str]:
    """What a caller needs to wire the graph up, as string key/values (ONNX metadata_props)."""
    x_shape = ["B"] + (["L"] if what == "sequence" else []) + ([] if model.vocab_size else [model.embed_dim])
    layout = {
        "inputs": inputs,
        "outputs": outputs,
        "x": {"shape": x_shape, "dtype": "int64 token ids" if model.vocab_size else "float32, raw data units"},
    }
    if what == "sequence":
        layout["mask"] = "bool [B, L], True at valid steps"
        scan = "a sequential ONNX Scan over the length: exact to float32 rounding at any length"
    else:
        layout["states"] = {
            "shapes": {name: [-1, *shape] for name, _, shape in carried(model)},
            "layout": "state_in_i / state_out_i: layer i's complex state as float32 [B, P, 2] (real, imag); "
            "pass every *_out of one frame as the *_in of the next",
        }
        scan = "none (one frame)"
    return {
        "s5ssm.what": what,
        "s5ssm.layout": json.dumps(layout),
        "s5ssm.zero_state": "zeros: every input but x is all zeros before the first frame" if what == "step"
        else "none (the graph starts every sequence from zero states)",
        "s5ssm.quantize": str(quantize),
        "s5ssm.config": json.dumps(model.config, default=list),
        "s5ssm.scan": scan,
    }


# ---------------------------------------------------------------------------- loading
def load_exportable(source: str | Path) -> S5Model:
    """The model of a `save_pretrained` directory (config.json) or of a run directory (its
    best checkpoint, as `s5ssm eval` loads it), in eval mode."""
    source = Path(source)
    if (source / CONFIG_NAME).is_file():
        return S5Model.from_pretrained(source).eval()
    if (source / "config.yaml").is_file():
        from .options import ALL_DEFAULTS
        from .training.build import load_run

        _, model, data = load_run(source, defaults=ALL_DEFAULTS)
        if data.info.get("timestamps"):
            raise ValueError(f"{source}: the model reads irregular timestamps (a per-step step_scale input), "
                             "which the exported graphs do not take")  # fmt: skip
        return model
    raise FileNotFoundError(f"{source}: neither a run directory (config.yaml) nor a save_pretrained "
                            f"directory ({CONFIG_NAME})")  # fmt: skip


# ---------------------------------------------------------------------------- export
def export(
    model_or_dir: nn.Module | str | Path,
    format: str = "onnx",
    what: str = "step",
    out: str | Path | None = None,
    quantize: str | None = None,
) -> Path:
    """Write the step or sequence graph of a model (or of a run / save_pretrained directory).

    Args:
        model_or_dir: an S5Model, or a directory `load_exportable` reads.
        format: "onnx" (opset 18) or "pt2" (torch.export.save; load with torch.export.load).
        what: "step" or "sequence" (module docstring: inputs, outputs, state layout).
        out: the file to write (default: model.onnx / model.pt2 in the current directory).
        quantize: None, or "int8" (ONNX only): onnxruntime's dynamic int8 quantisation of
            the weights of the exported graph.

    Returns:
        The path written.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if quantize is not None and format != "onnx":
        raise ValueError(f"quantize={quantize!r}: only ONNX graphs are quantised (format='onnx'), "
                         f"got format={format!r}")  # fmt: skip
    if format == "onnx":
        _expect_installed(("onnx", "onnxscript") + (("onnxruntime",) if quantize else ()), f"format={format!r}")
    model = model_or_dir if isinstance(model_or_dir, nn.Module) else load_exportable(model_or_dir)
    check_exportable(model, what)
    model = copy.deepcopy(model).eval()  # the caller's model keeps its mode
    graph = (StepGraph if what == "step" else SequenceGraph)(model).eval()
    args, dynamic, inputs, outputs = _signature(model, what)
    out = Path(out if out is not None else f"model.{format}")
    info = metadata(model, what, inputs, outputs, quantize)
    with torch.no_grad(), _quiet():
        program = torch.export.export(graph, args, dynamic_shapes=dynamic)
        if format == "pt2":
            # no pickle in the archive: the graph is JSON, the weights raw bytes, and the example
            # inputs (which torch.export.save would write with torch.save) are left out
            program.example_inputs = None
            buffer = io.BytesIO()
            torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(info)})
            atomic_write_bytes(out, buffer.getvalue())
            return out
        proto = _onnx_proto(program, args, inputs, outputs)
        if quantize == "int8":
            proto = _quantize_int8(proto)
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def _expect_installed(packages: tuple[str, ...], what: str) -> None:
    """ImportError naming the missing packages `what` needs (the deploy extra)."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"{what} needs {', '.join(missing)}: pip install 's5ssm[deploy]'", name=missing[0])


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's notices (missing torchvision ops, deprecations inside torch)."""
    # torch.onnx's registry, and onnxruntime's quantizer (which logs on the root logger)
    loggers = [logging.getLogger("torch.onnx"), logging.getLogger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _onnx_proto(program, args: tuple, inputs: list[str], outputs: list[str]):
    """The ONNX ModelProto of an ExportedProgram, inputs and outputs named."""
    onnx_program = torch.onnx.export(
        program, args, input_names=inputs, output_names=outputs, opset_version=OPSET, dynamo=True,
        external_data=False, verbose=False,
    )  # fmt: skip
    return onnx_program.model_proto


def _quantize_int8(proto):
    """onnxruntime's quantize_dynamic (int8 weights, activations quantised on the fly)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        plain, quantized = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        plain.write_bytes(proto.SerializeToString())
        quantize_dynamic(plain, quantized, weight_type=QuantType.QInt8)
        return onnx.load(quantized)


def zero_states(meta: dict[str, str], batch: int) -> dict:
    """The zero state inputs of a step graph, from its metadata: {name: float32 zeros}, numpy."""
    import numpy as np

    shapes = json.loads(meta["s5ssm.layout"])["states"]["shapes"]
    return {name: np.zeros([batch] + shape[1:], dtype=np.float32) for name, shape in shapes.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The s5ssm.* metadata of an exported .onnx or .pt2 file."""
    path = Path(path)
    if path.suffix == ".pt2":
        extra = {METADATA_FILE: ""}
        torch.export.load(path, extra_files=extra)
        return json.loads(extra[METADATA_FILE])
    import onnx

    return {p.key: p.value for p in onnx.load(path).metadata_props}


__all__ = ["export", "load_exportable", "check_exportable", "read_metadata", "zero_states", "FORMATS", "WHATS"]
