"""The compiled streaming step: `S5Model.step` as one numba call on the CPU.

A frame of `S5Model.step` in torch ops is about 50 small ops, each paying PyTorch's
dispatch cost, so at batch 1 it is bound by dispatch rather than arithmetic. For
inference on the CPU `S5Model.step` hands the frame to the kernel in
`streaming/kernel.py` instead, through a `CompiledStep` built once per model:

- the kernel reads the model's parameters and buffers in place (numpy views, no copies)
  and discretises every frame, so any write to their contents (optimizer steps,
  `load_state_dict`, `torch.no_grad` edits, `.data.copy_`) is seen on the next frame;
- a replaced tensor or module (assignment, `.to()`, `.data = ...`), a changed option, or a
  submodule switched to training mode makes `CompiledStep.current` false (its
  s5ssm.cache_key.CacheKey), and the model builds a new one (or falls back to torch ops).

Used when: the model and the frame are on the CPU in float32/float64, every module is in
eval mode, no gradient is wanted (`torch.no_grad`/`torch.inference_mode`, or nothing
requires grad), every layer's scan backend resolves to "cpu" (the default "auto" on the
CPU; "parallel" or "reference" keep the torch ops), and the blocks use the norms of
block.py. Token (Embedding) and other encoders run in torch ops before the kernel.
The torch-ops path stays the reference; tests/test_stack_step.py holds the two together.
"""

from __future__ import annotations

import os
import weakref

import numpy as np
import torch
from numba import typed
from torch import nn

from ..block import LayerNorm, RMSNorm, SequenceBatchNorm
from ..cache_key import CacheKey
from ..scan import resolve_backend
from . import kernel

# below this batch size the frame runs on one thread (starting numba's threads costs more)
PARALLEL_MIN_BATCH = 8
_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_NUMPY_OF = {torch.float32: np.float32, torch.float64: np.float64}
_BUILT: "weakref.WeakKeyDictionary[nn.Module, CompiledStep]" = weakref.WeakKeyDictionary()


class StreamCache(dict):
    """The streaming state of `S5Model.step`, read-only:
    {"states": tuple of complex (B, P) per layer, "sum": (B, H) pooling sum, "count": int}.

    `step` returns a new one each frame and never modifies the one it is given. Being
    read-only (build a changed copy with ``dict(cache, ...)``) lets `step` skip re-checking
    the states it computed itself for NaN/Inf, a third of a frame's cost at batch 1; plain
    dicts are checked in full. When the states were made together (`init_cache`, the
    compiled step) they are the rows of one (num_layers, B, P) tensor, kept so that the
    next compiled step reads them without stacking.
    """

    def __init__(self, *, states, sum, count, stacked=None) -> None:
        super().__init__(states=states, sum=sum, count=count)
        self._stacked = stacked

    def _read_only(self, *args, **kwargs):
        raise TypeError("the streaming cache is read-only; build a changed copy with dict(cache, key=value)")

    __setitem__ = __delitem__ = clear = pop = popitem = setdefault = update = __ior__ = _read_only


def _norm_kind(norm: nn.Module) -> int | None:
    """Index of the norm in kernel.NORMS, or None if the kernel cannot run it."""
    if type(norm) is LayerNorm and norm.weight is not None and norm.bias is not None:
        return kernel.NORMS.index("layer")
    if type(norm) is RMSNorm:
        return kernel.NORMS.index("rms")
    if type(norm) is SequenceBatchNorm and norm.affine and norm.running_mean is not None:
        return kernel.NORMS.index("batch")
    return None


class CompiledStep:
    """The kernel's arguments for one model, and the checks that they still describe it.

    `supported` is False when the kernel cannot run the model (then `S5Model.step` uses
    torch ops); `current()` says whether this still describes the model. Call as
    `step(x_t, states, total, count, step_scale)` after `S5Model.step`'s checks.
    """

    def __init__(self, model: nn.Module) -> None:
        attributes = [(model, "pooling")] + [
            (obj, attr)
            for block in model.layers
            for obj, attrs in (
                (block, ("prenorm", "activation")),
                (block.norm, ("eps",)),
                (block.ssm, ("discretization", "clip_eigs", "step_rescale", "conj_sym", "scan_backend")),
            )
            for attr in attrs
        ]
        # the kernel reads the tensors in place (live views): no version counters needed
        self.key = CacheKey(model, attributes)
        self.backend_env = os.environ.get("S5SSM_SCAN_BACKEND")
        self.dtype = model.layers[0].ssm.D.dtype
        everything = [t for t in (*model.parameters(), *model.buffers()) if t is not None]
        floats = [t for t in everything if t.is_floating_point()]
        self.supported = (
            _supported_blocks(model)
            and self.dtype in _COMPLEX_OF
            and all(t.device.type == "cpu" and t.dtype == self.dtype and t.is_contiguous() for t in floats)
        )
        if self.supported:
            self._pack(model)

    def _pack(self, model: nn.Module) -> None:
        """The kernel's arguments (see kernel.py): live views of the weights, sizes, options."""
        self.complex_dtype = _COMPLEX_OF[self.dtype]
        self.encode_in_kernel = type(model.encoder) is nn.Linear and model.encoder.bias is not None
        self.num_layers, self.num_states = len(model.layers), model.layers[0].ssm.num_states
        self.hidden_size, self.output_size = model.hidden_size, model.output_size
        encoder = _linear_params(model.encoder if self.encode_in_kernel else None)
        head = _linear_params(model.head)
        tensors = kernel.pack(kernel.HEAD, {"encoder_weight": encoder[0], "encoder_bias": encoder[1],
                                            "head_weight": head[0], "head_bias": head[1]})  # fmt: skip
        options, consts = [], []
        for block in model.layers:
            ssm, norm = block.ssm, block.norm
            is_batch = type(norm) is SequenceBatchNorm
            out1, out2 = _linear_params(getattr(block, "out1", None)), _linear_params(getattr(block, "out2", None))
            tensors += kernel.pack(kernel.LAYER, {
                "norm_weight": norm.weight, "norm_bias": getattr(norm, "bias", None),
                "running_mean": norm.running_mean if is_batch else None,
                "running_var": norm.running_var if is_batch else None,
                "Lambda_re": ssm.Lambda_re, "Lambda_im": ssm.Lambda_im, "log_step": ssm.log_step,
                "B": ssm.B, "C": ssm.C, "D": ssm.D,
                "out1_weight": out1[0], "out1_bias": out1[1], "out2_weight": out2[0], "out2_bias": out2[1],
            })  # fmt: skip
            options.append(kernel.pack(kernel.OPTION, {
                "norm": _norm_kind(norm), "prenorm": int(block.prenorm),
                "activation": kernel.ACTIVATIONS.index(block.activation),
                "bilinear": int(ssm.discretization == "bilinear"), "clip_eigs": int(ssm.clip_eigs),
            }))  # fmt: skip
            consts.append(kernel.pack(kernel.CONST, {"eps": norm.eps, "step_rescale": ssm.step_rescale,
                                                     "output_scale": 2.0 if ssm.conj_sym else 1.0}))  # fmt: skip
        self.numpy_dtype = _NUMPY_OF[self.dtype]
        self.numpy_complex = np.complex64 if self.dtype == torch.float32 else np.complex128
        empty = np.empty(0, dtype=self.numpy_dtype)
        self.weights = typed.List([t.detach().view(-1).numpy() if t is not None else empty for t in tensors])
        embed = model.encoder.in_features if self.encode_in_kernel else self.hidden_size
        self.dims = np.array(kernel.pack(kernel.DIM, {
            "embed": embed, "hidden": self.hidden_size, "states": self.num_states, "layers": self.num_layers,
            "outputs": self.output_size, "has_encoder": int(self.encode_in_kernel),
            "mean_pooling": int(model.pooling == "mean"), "has_head": int(model.head is not None),
        }), dtype=np.int64)  # fmt: skip
        self.options = np.array(options, dtype=np.int64)
        self.consts = np.array(consts, dtype=np.float64)
        self.ones: dict[int, np.ndarray] = {}  # step_scale None, per batch size

    def current(self) -> bool:
        """True while the model still has the tensors, modules and options this was built
        from, all in eval mode (s5ssm.cache_key), and the same S5SSM_SCAN_BACKEND."""
        return self.key.current() and os.environ.get("S5SSM_SCAN_BACKEND") == self.backend_env

    def trusted_states(self, cache: object, batch: int) -> torch.Tensor | None:
        """The stacked (num_layers, B, P) states of a StreamCache made by `init_cache` or
        `step` for a model like this one (dtypes and shapes match), else None (check in full)."""
        if type(cache) is not StreamCache:
            return None
        stacked, total = cache._stacked, cache["sum"]
        if stacked is None or stacked.dtype != self.complex_dtype or total.dtype != self.dtype:
            return None
        if not (stacked.is_cpu and total.is_cpu):
            return None
        if stacked.shape != (self.num_layers, batch, self.num_states) or total.shape != (batch, self.hidden_size):
            return None
        return stacked

    def step_scales(self, step_scale: float | torch.Tensor | None, batch: int) -> np.ndarray:
        """The kernel's float64 (B,) step_scale from a checked None, float or (B,) tensor."""
        if isinstance(step_scale, torch.Tensor):
            return step_scale.detach().to(torch.float64).numpy()
        if step_scale is None:
            ones = self.ones.get(batch)  # the kernel only reads it
            if ones is None:
                ones = self.ones[batch] = np.ones(batch)
            return ones
        return np.full(batch, step_scale)

    def __call__(
        self, x_t: torch.Tensor, states: torch.Tensor, total: torch.Tensor, count: int, step_scale: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """One frame: x_t (B, E), or (B, H) when the encoder ran in torch ops; states complex
        (layers, B, P); total (B, H); step_scale float64 (B,). Returns (out (B, O), new
        states, new total), or None if x_t holds a NaN or Inf."""
        batch = x_t.shape[0]
        # numpy allocates faster than torch.empty; from_numpy shares the memory
        new_states = np.empty((self.num_layers, batch, self.num_states), dtype=self.numpy_complex)
        new_total = np.empty((batch, self.hidden_size), dtype=self.numpy_dtype)
        out = np.empty((batch, self.output_size), dtype=self.numpy_dtype)
        run = kernel.stack_step_parallel if batch >= PARALLEL_MIN_BATCH else kernel.stack_step_serial
        finite = run(
            x_t.numpy(), self.weights, self.dims, self.options, self.consts, step_scale, states.numpy(),
            new_states, total.numpy(), new_total, count, out,
        )  # fmt: skip
        if not finite:
            return None
        return torch.from_numpy(out), torch.from_numpy(new_states), torch.from_numpy(new_total)


def _linear_params(linear: nn.Module | None) -> list[torch.Tensor | None]:
    return [linear.weight, linear.bias] if linear is not None else [None, None]


def _supported_blocks(model: nn.Module) -> bool:
    """Whether the kernel implements every piece of the model (apart from the encoder)."""
    if model.bidirectional:
        return False
    if model.head is not None and (type(model.head) is not nn.Linear or model.head.bias is None):
        return False
    for block in model.layers:
        if _norm_kind(block.norm) is None or not isinstance(getattr(block.ssm, "C", None), torch.Tensor):
            return False
        if any(getattr(block, name, None) is not None and getattr(block, name).bias is None for name in ("out1", "out2")):
            return False
        backend = block.ssm.scan_backend  # another explicit backend (triton) need not resolve on the CPU
        if backend not in ("auto", "cpu") or resolve_backend(backend, torch.device("cpu")) != "cpu":
            return False
    return True


def compiled_step_for(model: nn.Module) -> CompiledStep | None:
    """The model's CompiledStep, (re)built when it no longer describes the model; None when
    the kernel cannot run the model now (a module in training mode, or unsupported)."""
    if model.training:
        return None
    built = _BUILT.get(model)
    if built is None or not built.current():
        if any(module.training for module in model.modules()):
            return None
        built = _BUILT[model] = CompiledStep(model)
    return built if built.supported else None
