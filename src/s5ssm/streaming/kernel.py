"""The compiled streaming kernel: one frame through a whole unidirectional S5 stack (numba).

The reference is `S5Model.step` in torch ops (model.py, block.py, ssm.py `recur`); this
kernel computes the same frame in one call, for streaming at batch 1 where a frame of
small torch ops is bound by dispatch (about 50 ops per frame). `s5ssm.streaming` packs a
model into its arguments; tests/test_stack_step.py checks it against the reference in
float64 and float32 for every block option.

Per sequence b and layer l (the block of lindermanlab/S5):

    u   = norm(h) if prenorm else h
    Δ   = step_scale[b] · step_rescale · exp(log_step)                  (P,)
    Λ̄,γ = zoh or bilinear of (Λ, Δ), Λ = (min(Λ_re, -1e-4) if clip_eigs else Λ_re) + iΛ_im
    x   = Λ̄ ⊙ x + γ ⊙ (B~ u)                                            (P,) complex
    y   = c · Re(C~ x) + D ⊙ u                   (c = 2 with conj_sym, else 1)
    h   = h + mix(y)              mix: gelu | full_glu | half_glu1 | half_glu2 (eval: no dropout)
    h   = norm(h) if not prenorm

before the layers an optional Linear encoder, after them pooling ("mean": running sum /
count) and an optional Linear head.

Arguments (F = float32 or float64, Z = the complex type of the same precision):

    x          F (B, E)           the frame (already encoded when has_encoder is 0)
    weights    typed List of F 1-D arrays, live views of the model's parameters: the
               HEAD slots, then per layer the LAYER slots (a zero-size array where a slot
               does not apply); `pack_weights` orders them
    dims       int64 (len(DIM),)              the DIM fields
    options    int64 (num_layers, len(OPTION))  per layer: the OPTION fields (norm: index in
                                              NORMS, activation: index in ACTIVATIONS)
    consts     float64 (num_layers, len(CONST)) per layer: the CONST fields (output_scale: c)
    step_scale float64 (B,)       Δ multiplier per sequence (ones for a plain step)
    states     Z (num_layers, B, P)         states before the frame
    new_states Z (num_layers, B, P)         written: states after the frame
    total      F (B, H), new_total F (B, H) running sum of the last layer's outputs before /
               after the frame (kept for every pooling, as `S5Model.step` does)
    count      int                frames in `total`
    out        F (B, O)           written: the model's output for the frame

Returns False if x holds a NaN or Inf (outputs are then undefined), else True.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numba
import numpy as np
from numba import prange

from ..scan.discretize_kernel import discretize_row



def _layout(name: str, fields: tuple[str, ...]):
    """Each field's position in an argument: the kernel reads `arg[DIM.hidden]`, a constant
    to numba; the packer places values by field name (`pack`)."""
    return namedtuple(name, fields)(*range(len(fields)))


# the weights list: the HEAD slots, then the LAYER slots of each layer in turn
HEAD = _layout("Head", ("encoder_weight", "encoder_bias", "head_weight", "head_bias"))
LAYER = _layout("Layer", (
    "norm_weight", "norm_bias", "running_mean", "running_var",
    "Lambda_re", "Lambda_im", "log_step", "B", "C", "D",
    "out1_weight", "out1_bias", "out2_weight", "out2_bias",
))  # fmt: skip
DIM = _layout("Dim", ("embed", "hidden", "states", "layers", "outputs", "has_encoder", "mean_pooling", "has_head"))
OPTION = _layout("Option", ("norm", "prenorm", "activation", "bilinear", "clip_eigs"))
CONST = _layout("Const", ("eps", "step_rescale", "output_scale"))
NORMS = ("layer", "rms", "batch")
ACTIVATIONS = ("gelu", "full_glu", "half_glu1", "half_glu2")
# reassociation lets LLVM vectorise the dot products; no assumptions about NaN or Inf
_FAST = {"reassoc", "contract"}
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def pack(layout, values: dict) -> list:
    """values, {field: value} with exactly the fields of `layout`, as a list in its order."""
    if set(values) != set(layout._fields):
        raise ValueError(f"{type(layout).__name__}: expected the fields {layout._fields}, got {tuple(values)}")
    return [values[field] for field in layout._fields]


@numba.njit(cache=True, fastmath=_FAST)
def _linear(w, bias, x, out, n_out, n_in):  # pragma: no cover - compiled
    """out = W x + bias for W (n_out, n_in) stored row-major in the 1-D array w."""
    for o in range(n_out):
        row = w[o * n_in : (o + 1) * n_in]  # slices keep indices provably >= 0: vectorised loops
        acc = bias[o]
        for i in range(n_in):
            acc += row[i] * x[i]
        out[o] = acc


@numba.njit(cache=True, fastmath=_FAST)
def _norm(kind, weight, bias, mean, var, eps, x, out, size):  # pragma: no cover - compiled
    """LayerNorm (0), RMSNorm (1) or BatchNorm with running statistics (2), over x[:size]."""
    if kind == 2:
        for i in range(size):
            out[i] = (x[i] - mean[i]) / math.sqrt(var[i] + eps) * weight[i] + bias[i]
        return
    mu = 0.0
    if kind == 0:
        for i in range(size):
            mu += x[i]
        mu /= size
    sq = 0.0
    for i in range(size):
        sq += (x[i] - mu) * (x[i] - mu)
    inv = 1.0 / math.sqrt(sq / size + eps)
    for i in range(size):
        out[i] = (x[i] - mu) * inv * weight[i] + (bias[i] if kind == 0 else 0.0)


@numba.njit(cache=True, fastmath=_FAST)
def _gelu(x):  # pragma: no cover - compiled
    """GELU in its tanh form (torch approximate="tanh", flax's default), written with one exp:
    0.5 (1 + tanh(z)) = 1 / (1 + exp(-2z))."""
    return x / (1.0 + math.exp(-2.0 * _SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


@numba.njit(cache=True, error_model="numpy")
def _discretize_layer(lam_re, lam_im, log_step, step, bilinear, clip_eigs, lam_bar, gamma):  # pragma: no cover
    """lam_bar, gamma (P,) = (Λ̄, γ) of one layer at step scale `step` (discretize_row, in
    the precision of the states)."""
    P = lam_bar.shape[0]
    lam = np.empty(P, lam_bar.dtype)
    inv_lam = np.empty(P, lam_bar.dtype)
    delta = np.empty(P, lam_re.dtype)
    scale = np.empty(1, lam_re.dtype)  # step in the states' precision
    scale[0] = step
    for p in range(P):
        re = min(lam_re[p], -1e-4) if clip_eigs else lam_re[p]
        lam[p] = complex(re, lam_im[p])
        inv_lam[p] = 1.0 / lam[p]
        delta[p] = math.exp(log_step[p])
    discretize_row(lam, inv_lam, delta, scale[0], not bilinear, lam_bar, gamma)


@numba.njit(cache=True, fastmath=_FAST)
def _frame(b, x, weights, dims, options, consts, step_scale, states, new_states, total, new_total, count, out):  # pragma: no cover
    """One frame of sequence b (see the module docstring)."""
    E, H, P, layers, O = dims[DIM.embed], dims[DIM.hidden], dims[DIM.states], dims[DIM.layers], dims[DIM.outputs]
    has_encoder, mean_pooling, has_head = dims[DIM.has_encoder], dims[DIM.mean_pooling], dims[DIM.has_head]
    dtype = x.dtype
    h = np.empty(H, dtype)
    u = np.empty(H, dtype)
    y = np.empty(H, dtype)
    act = np.empty(H, dtype)
    gate = np.empty(H, dtype)
    flat_state = np.empty(2 * P, dtype)  # (re, -im) interleaved: Re(C~ x) is one dot per row
    lam_bar = np.empty(P, states.dtype)
    gamma = np.empty(P, states.dtype)
    if has_encoder:
        _linear(weights[HEAD.encoder_weight], weights[HEAD.encoder_bias], x[b], h, H, E)
    else:
        for i in range(H):
            h[i] = x[b, i]
    for layer in range(layers):
        norm_kind, prenorm = options[layer, OPTION.norm], options[layer, OPTION.prenorm]
        activation = options[layer, OPTION.activation]
        bilinear, clip_eigs = options[layer, OPTION.bilinear], options[layer, OPTION.clip_eigs]
        eps, step_rescale = consts[layer, CONST.eps], consts[layer, CONST.step_rescale]
        c_scale = consts[layer, CONST.output_scale]
        base = len(HEAD) + layer * len(LAYER)
        norm_w, norm_b = weights[base + LAYER.norm_weight], weights[base + LAYER.norm_bias]
        mean, var = weights[base + LAYER.running_mean], weights[base + LAYER.running_var]
        lam_re, lam_im = weights[base + LAYER.Lambda_re], weights[base + LAYER.Lambda_im]
        log_step = weights[base + LAYER.log_step]
        B, C, D = weights[base + LAYER.B], weights[base + LAYER.C], weights[base + LAYER.D]
        if prenorm:
            _norm(norm_kind, norm_w, norm_b, mean, var, eps, h, u, H)
        else:
            for i in range(H):
                u[i] = h[i]
        # read live every frame: any write to Λ or log Δ is seen
        _discretize_layer(lam_re, lam_im, log_step, step_scale[b] * step_rescale, bilinear, clip_eigs, lam_bar, gamma)
        # x = Λ̄ x + γ (B~ u), B stored (P, H, 2)
        for p in range(P):
            bu_re = 0.0
            bu_im = 0.0
            row = B[2 * p * H : 2 * (p + 1) * H]
            for i in range(H):
                bu_re += row[2 * i] * u[i]
                bu_im += row[2 * i + 1] * u[i]
            x_new = lam_bar[p] * states[layer, b, p] + gamma[p] * complex(bu_re, bu_im)
            new_states[layer, b, p] = x_new
            flat_state[2 * p] = x_new.real
            flat_state[2 * p + 1] = -x_new.imag
        # y = c Re(C~ x) + D u, C stored (H, P, 2)
        for i in range(H):
            acc = 0.0
            row = C[2 * i * P : 2 * (i + 1) * P]
            for k in range(2 * P):
                acc += row[k] * flat_state[k]
            y[i] = c_scale * acc + D[i] * u[i]
        for i in range(H):
            act[i] = _gelu(y[i])
        if activation == 0:  # gelu
            for i in range(H):
                h[i] += act[i]
        else:
            _linear(weights[base + LAYER.out2_weight], weights[base + LAYER.out2_bias], act, gate, H, H)
            if activation == 1:  # full_glu: out1(act) * sigmoid(out2(act))
                _linear(weights[base + LAYER.out1_weight], weights[base + LAYER.out1_bias], act, u, H, H)
                for i in range(H):
                    h[i] += u[i] / (1.0 + math.exp(-gate[i]))
            else:  # half_glu1 gates act, half_glu2 gates y
                for i in range(H):
                    h[i] += (act[i] if activation == 2 else y[i]) / (1.0 + math.exp(-gate[i]))
        if not prenorm:
            _norm(norm_kind, norm_w, norm_b, mean, var, eps, h, u, H)
            for i in range(H):
                h[i] = u[i]
    for i in range(H):
        new_total[b, i] = total[b, i] + h[i]
        if mean_pooling:
            h[i] = new_total[b, i] / (count + 1)
    if has_head:
        _linear(weights[HEAD.head_weight], weights[HEAD.head_bias], h, out[b], O, H)
    else:
        for i in range(H):
            out[b, i] = h[i]


@numba.njit(cache=True)
def _all_finite(x):  # pragma: no cover - compiled
    for value in x.ravel():
        if not math.isfinite(value):
            return False
    return True


@numba.njit(cache=True)
def stack_step_serial(x, weights, dims, options, consts, step_scale, states, new_states, total, new_total, count, out):  # pragma: no cover
    """The frame for every sequence, one after another (batch 1: no thread start-up)."""
    if not _all_finite(x):
        return False
    for b in range(x.shape[0]):
        _frame(b, x, weights, dims, options, consts, step_scale, states, new_states, total, new_total, count, out)
    return True


@numba.njit(cache=True, parallel=True)
def stack_step_parallel(x, weights, dims, options, consts, step_scale, states, new_states, total, new_total, count, out):  # pragma: no cover
    """The frame with the sequences spread over numba's threads."""
    if not _all_finite(x):
        return False
    for b in prange(x.shape[0]):
        _frame(b, x, weights, dims, options, consts, step_scale, states, new_states, total, new_total, count, out)
    return True
