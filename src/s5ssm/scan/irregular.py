"""Compiled CPU scan with the discretisation fused in, for a step_scale that varies per step.

For irregular sampling (step_scale s of shape (B, L)) each step has its own discretisation
of the same continuous eigenvalues Λ (P,) and steps Δ (P,): with w = Δ_p s_{b,k},

    zoh:       Λ̄ = exp(Λw),                  γ = expm1(Λw) / Λ
    bilinear:  Λ̄ = (1 + Λw/2) / (1 - Λw/2),  γ = w / (1 - Λw/2)
    x_k = Λ̄_k x_{k-1} + γ_k v_k,             v = B~u  (B, L, P)

The unfused path (s5ssm.discretize + scan.linear_scan, kept as the reference and for
other devices) materialises Λ̄ and γ as complex (B, L, P) tensors and keeps them, γv and
their gradients for backward. Here Λ̄ and γ are computed in the kernels, one row of
states at a time: forward writes only the states; backward is the reverse scan with
Λ̄, γ recomputed, and reduces dΛ, dΔ (per sequence, summed after) and ds (per step) on
the fly. Only v and the states are saved for backward, as for a scalar step.

Per element the discretisation costs an exp and a sin/cos pair. numba compiles math.exp,
math.sin, ... to libm calls, which keep a loop scalar (with them this forward kernel took
~8x the time of the plain scan), so `exp_expm1` and `sincos` below are straight-line
polynomial code that LLVM vectorises over the states (4 float64 or 8 float32 lanes with
AVX2), in the precision of the data: float32 for complex64 (as torch's complex64
discretisation), float64 for complex128. Their references are math.exp, math.expm1,
math.sin and math.cos (tested).

Gradients follow PyTorch's convention for complex tensors (grad = conj(∂f/∂z)·grad_out
for holomorphic f; the real part for a real input). A zero step (w = 0, a masked step of
a non-contiguous mask) gives Λ̄ = 1 and γ = 0: the state passes through.

The polynomial helpers live in this file on purpose: numba's cache (cache=True) is
invalidated by changes to the kernel's own source file only, not to files it calls into.
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from typing import NamedTuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

from .._checks import expect_bool_mask, expect_dtype, expect_same_device, expect_shape, expect_tensor
from .bridge import (KernelOp, as_array, differentiable, flags, output_like, sink, state_array, task_span, touch_rows,
                     writable)
from .bridge import thread_splits as _splits  # a global of this module: replaceable to force a split

METHODS = ("zoh", "bilinear")
# Time steps per block of a backwards walk, touched first (bridge.touch_rows). The same value
# as cpu._BLOCK, but defined here: numba's cache of this file's kernels keeps the globals
# they read as they were when compiled, and is refreshed only when this file changes.
_BLOCK = 128
_FLAGS = {"contract"}  # fused multiply-adds (one rounding instead of two); no other fast-math


# ---------------------------------------------------------------------------- exp and sin/cos
class _Precision(NamedTuple):
    """Constants of `exp_expm1` and `sincos` in one float type (numba specialises on it).

    exp_expm1: x = n·ln2 + r, |r| <= ln2/2, expm1(r) by its Taylor series (`exp`, highest
    order first), then exp x = 2^n (1 + expm1 r), expm1 x = (2^n - 1) + 2^n expm1 r.
    sincos: y = k·π/2 + r, |r| <= π/4 (Cody-Waite: π/2 in three parts of which the first
    two times k are exact for |k| < 2^(mantissa - split bits)), Taylor series of sin r and
    cos r in z = r² (`sin`, `cos`). Beyond that |k| the reduction's error grows like
    |y|·eps, the rounding error y itself carries; once |y|·eps nears π/4 (|y| ~ 2^mantissa)
    sin y and cos y mean nothing, and r is clamped to ±π/4 so that they stay on the unit
    circle (a state is never amplified by them).
    """

    zero: float  # the literals in the float type (a Python float literal would promote to float64)
    quarter: float
    half: float
    one: float
    two: float
    three: float
    four: float
    inf: float
    inv_ln2: float
    ln2_hi: float
    ln2_lo: float
    n_min: float  # 2^n stays a normal number
    n_max: float
    exp_min: float  # below: exp = 0 (subnormal results are not produced)
    exp_max: float  # above: exp = inf
    exp: tuple  # 1/k! for k = top .. 2
    inv_pio2: float
    pio2_1: float
    pio2_2: float
    pio2_3: float
    pio4: float
    sin: tuple  # (-1)^k/(2k+1)! for k = top .. 1
    cos: tuple  # (-1)^k/(2k)! for k = top .. 2


def _pi() -> Decimal:
    """π to the Decimal context's precision (the recipe of Python's decimal documentation)."""
    with localcontext() as ctx:
        ctx.prec += 2
        last, t, s, n, na, d, da = 0, Decimal(3), 3, 1, 0, 0, 24
        while s != last:
            last = s
            n, na = n + na, na + 8
            d, da = d + da, da + 32
            t = (t * n) / d
            s += t
    return +s


def _split(value: Decimal, bits: int, parts: int) -> list[float]:
    """value ≈ sum of `parts` floats, all but the last truncated to `bits` significant bits."""
    out = []
    for _ in range(parts - 1):
        mantissa, exponent = math.frexp(float(value))
        head = math.ldexp(math.trunc(mantissa * 2**bits), exponent - bits)
        out.append(head)
        value -= Decimal(head)
    return out + [float(value)]


def _make_precision(dtype, exp_top: int, sin_top: int, cos_top: int, split_bits: int) -> _Precision:
    """The constants for numpy float type `dtype` with Taylor series up to the given orders."""
    info = np.finfo(dtype)
    with localcontext() as ctx:
        ctx.prec = 60
        pio2, ln2 = _pi() / 2, Decimal(2).ln()
        ln2_hi, ln2_lo = _split(ln2, split_bits, 2)
        values = dict(
            zero=0.0, quarter=0.25, half=0.5, one=1.0, two=2.0, three=3.0, four=4.0, inf=math.inf,
            inv_ln2=float(1 / ln2), ln2_hi=ln2_hi, ln2_lo=ln2_lo,
            n_min=float(info.minexp), n_max=float(info.maxexp - 1),
            exp_min=math.log(float(info.smallest_normal)), exp_max=math.log(float(info.max)),
            inv_pio2=float(1 / pio2), **dict(zip(("pio2_1", "pio2_2", "pio2_3"), _split(pio2, split_bits, 3))),
            pio4=float(pio2 / 2),
        )  # fmt: skip
    series = dict(
        exp=tuple(1 / math.factorial(k) for k in range(exp_top, 1, -1)),
        sin=tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(sin_top, 0, -1)),
        cos=tuple((-1) ** k / math.factorial(2 * k) for k in range(cos_top, 1, -1)),
    )
    cast = dtype.type
    return _Precision(**{k: cast(x) for k, x in values.items()}, **{k: tuple(map(cast, x)) for k, x in series.items()})


# Taylor orders: the first neglected term is below half an ulp on the reduced ranges
_F64 = _make_precision(np.dtype(np.float64), exp_top=14, sin_top=8, cos_top=9, split_bits=32)
_F32 = _make_precision(np.dtype(np.float32), exp_top=9, sin_top=4, cos_top=5, split_bits=12)


def _precision(array):  # pragma: no cover - replaced by the overload in compiled code
    """The _Precision of a float32 or float64 array's dtype (a compile-time constant)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(_precision)
def _precision_overload(array):
    # Chosen while typing (a constant in the kernel, not an argument: numba's parallel
    # regions take no tuple arguments).
    constants = _F32 if array.dtype == types.float32 else _F64
    return lambda array: constants


@intrinsic
def _pow2(typingctx, n):
    """2**n for an integral float n in [n_min, n_max], built from the exponent bits.

    n + (2^mantissa + bias) holds n + bias in its low mantissa bits; shifted left by the
    mantissa width they become the biased exponent of 2^n (no float -> int conversion,
    which AVX2 lacks for float64).
    """
    if n not in (types.float32, types.float64):
        return None
    width, mantissa, bias = (32, 23, 127) if n == types.float32 else (64, 52, 1023)

    def codegen(context, builder, signature, args):
        real, integer = context.get_value_type(n), ir.IntType(width)
        shifted = builder.fadd(args[0], ir.Constant(real, 2.0**mantissa + bias))
        bits = builder.shl(builder.bitcast(shifted, integer), ir.Constant(integer, mantissa))
        return builder.bitcast(bits, real)

    return n(n), codegen


@numba.njit(inline="always", error_model="numpy")
def exp_expm1(x, c):  # pragma: no cover - compiled
    """(exp x, expm1 x) of a float x, constants c: _Precision of x's type (see there)."""
    n = np.rint(x * c.inv_ln2)
    n = n if n > c.n_min else c.n_min  # selects: a NaN x gives n = n_min, r = NaN
    n = n if n < c.n_max else c.n_max
    r = (x - n * c.ln2_hi) - n * c.ln2_lo
    q = c.zero
    for coefficient in c.exp:  # a loop over a constant tuple: unrolled by LLVM
        q = q * r + coefficient
    expm1_r = r + r * r * q
    scale = _pow2(n)
    e = scale + scale * expm1_r
    em1 = (scale - c.one) + scale * expm1_r
    e = c.zero if x < c.exp_min else (c.inf if x > c.exp_max else e)
    em1 = -c.one if x < c.exp_min else (c.inf if x > c.exp_max else em1)
    return e, em1


@numba.njit(inline="always", error_model="numpy")
def sincos(y, c):  # pragma: no cover - compiled
    """(sin y, cos y) of a float y, constants c: _Precision of y's type (see there)."""
    k = np.rint(y * c.inv_pio2)
    r = ((y - k * c.pio2_1) - k * c.pio2_2) - k * c.pio2_3
    r = c.pio4 if r > c.pio4 else (-c.pio4 if r < -c.pio4 else r)  # see _Precision; keeps NaN
    z = r * r
    ps = c.zero
    for coefficient in c.sin:
        ps = ps * z + coefficient
    pc = c.zero
    for coefficient in c.cos:
        pc = pc * z + coefficient
    sin_r = r + r * z * ps
    cos_r = (c.one - c.half * z) + z * z * pc
    quadrant = k - c.four * np.floor(c.quarter * k)  # k mod 4, as a float
    odd = (quadrant == c.one) | (quadrant == c.three)
    sin_y = cos_r if odd else sin_r
    cos_y = -sin_r if odd else cos_r
    negate = quadrant >= c.two
    return (-sin_y if negate else sin_y), (-cos_y if negate else cos_y)


# ---------------------------------------------------------------------------- rows of states
# One row = the states lo .. hi of one (sequence, step); the kernels pass row views
# (x[b, k, lo:hi]: 1-d, contiguous) so that every loop indexes with its own counter, which
# LLVM vectorises. lam, inv_lam (Λ, 1/Λ): complex (n,) and delta (Δ): real (n,), in the
# precision of the data (float32 for complex64), which Λ̄ and γ are computed in.
@numba.njit(inline="always", error_model="numpy")
def _zoh_row(lam, inv_lam, delta, s, c, lam_bar, gamma):  # pragma: no cover - compiled
    """Λ̄ = exp(a), γ = expm1(a)/Λ for a = Λ·Δ·s; c: _Precision."""
    for j in range(lam_bar.shape[0]):
        w = delta[j] * s
        e, em1 = exp_expm1(lam[j].real * w, c)
        sin_h, cos_h = sincos(c.half * (lam[j].imag * w), c)  # half angle: cos y - 1 = -2 sin²(y/2)
        sin_y = c.two * sin_h * cos_h
        versine = c.two * sin_h * sin_h
        cos_y = c.one - versine
        expm1_a = complex(em1 * cos_y - versine, e * sin_y)  # no cancellation near a = 0
        lam_bar[j] = complex(e * cos_y, e * sin_y)
        gamma[j] = expm1_a * inv_lam[j]


@numba.njit(inline="always", error_model="numpy")
def _bilinear_row(lam, delta, s, c, lam_bar, gamma):  # pragma: no cover - compiled
    """inv = 1/(1 - a/2), Λ̄ = (1 + a/2)·inv, γ = Δ·s·inv for a = Λ·Δ·s; c: _Precision."""
    for j in range(lam_bar.shape[0]):
        w = delta[j] * s
        d_re, d_im = c.one - c.half * w * lam[j].real, -c.half * w * lam[j].imag  # 1 - a/2
        norm = c.one / (d_re * d_re + d_im * d_im)
        inv_re, inv_im = d_re * norm, -d_im * norm
        n_re, n_im = c.two - d_re, -d_im  # 1 + a/2
        lam_bar[j] = complex(n_re * inv_re - n_im * inv_im, n_re * inv_im + n_im * inv_re)
        gamma[j] = complex(w * inv_re, w * inv_im)


@numba.njit(inline="always")
def _discretize_row(lam, inv_lam, delta, s, zoh, lam_bar, gamma):  # pragma: no cover - compiled
    """Fill lam_bar, gamma (n,) with Λ̄, γ at step scale s (the reference: s5ssm.discretize)."""
    if zoh:
        _zoh_row(lam, inv_lam, delta, s, _precision(delta), lam_bar, gamma)
    else:
        _bilinear_row(lam, delta, s, _precision(delta), lam_bar, gamma)


@numba.njit(inline="always")
def _step_row(lam_bar, gamma, x, v, out):  # pragma: no cover - compiled
    """x = out = Λ̄ x + γ v: one step of the recurrence (out may be v)."""
    for j in range(out.shape[0]):
        y = lam_bar[j] * x[j] + gamma[j] * v[j]
        x[j] = y
        out[j] = y


@numba.njit(inline="always")
def _adjoint_recurrence_row(zoh, lam_bar, gamma, grad, carry, d_v, q):  # pragma: no cover - compiled
    """The adjoint's recurrence on a row: g = dx + carry (carry: conj(Λ̄_next) g_next),
    d v = conj(γ) g (d_v may be grad: each element is read before it is written), then
    carry = c = conj(Λ̄) g. q (n,) complex128 holds g, then for bilinear conj(inv²) g
    (inv = (Λ̄ + 1)/2), which the sums take; for ZOH they take the new carry c. Separate
    loops of few arrays each, as in `_adjoint_sums_row`."""
    for j in range(carry.shape[0]):
        q[j] = grad[j] + carry[j]
    for j in range(carry.shape[0]):
        d_v[j] = np.conj(gamma[j]) * q[j]
        carry[j] = np.conj(lam_bar[j]) * q[j]
    if not zoh:
        for j in range(carry.shape[0]):
            inv = 0.5 * (lam_bar[j] + 1.0)
            q[j] = np.conj(inv * inv) * q[j]


@numba.njit(inline="always")
def _adjoint_sums_row(zoh, lam_delta, delta, s, v, x_prev, q, d_v, acc, d_s_row):  # pragma: no cover - compiled
    """The chain rule of one step on a row, after `_adjoint_recurrence_row` (q there; for
    ZOH pass the new carry as q). lam_delta = conj(Λ)·Δ complex128 (n,); acc (3, n).

    ZOH: with dΛ̄ = g conj(x_prev), dγ = g conj(v), t1 = conj(Λ̄) dΛ̄ = c conj(x_prev),
    t2 = conj(Λ̄) dγ = c conj(v) and ∂Λ̄/∂Λ = wΛ̄, ∂Λ̄/∂w = ΛΛ̄, ∂γ/∂Λ = (wΛ̄ - γ)/Λ,
    ∂γ/∂w = Λ̄ (w = Δs), PyTorch's convention gives dΛ += w t1 + conj(1/Λ)(w t2 - conj(γ) dγ),
    dw = Re(conj(Λ) t1 + t2). Λ and Δ are constant per state, so acc sums s·t1, s·t2,
    conj(γ) dγ = (d v) conj(v) over the steps and `finalize` applies Λ, Δ once.

    Bilinear: with inv = 1/(1 - wΛ/2) = (Λ̄ + 1)/2, ∂Λ̄/∂Λ = w·inv², ∂Λ̄/∂w = Λ·inv²,
    ∂γ/∂Λ = (w²/2)·inv², ∂γ/∂w = inv²; with t1 = q conj(x_prev), t2 = q conj(v) (q =
    conj(inv²) g): dΛ += w t1 + (w²/2) t2 and dw = Re(conj(Λ) t1 + t2); acc sums s·t1, s·t2,
    (s²/2)·t2.

    d_s_row[j] = dw_j Δ_j, whose sum over the row is the gradient of s (`_row_sum`). Three
    loops of few arrays each, not one: LLVM vectorises a loop only while the runtime
    overlap checks between its arrays stay few."""
    acc_1, acc_2, acc_3 = acc[0], acc[1], acc[2]
    for j in range(q.shape[0]):
        t1 = q[j] * np.conj(x_prev[j])
        acc_1[j] += s * t1
        d_s_row[j] = (lam_delta[j] * t1).real
    for j in range(q.shape[0]):
        t2 = q[j] * np.conj(v[j])
        acc_2[j] += s * t2
        d_s_row[j] += t2.real * delta[j]
    if zoh:
        for j in range(q.shape[0]):
            acc_3[j] += d_v[j] * np.conj(v[j])
    else:
        half_s2 = 0.5 * s * s
        for j in range(q.shape[0]):
            acc_3[j] += half_s2 * (q[j] * np.conj(v[j]))


@numba.njit(fastmath={"reassoc", "contract"})
def _row_sum(row):  # pragma: no cover - compiled
    """Σ row, float64 (n,). Compiled apart, with reassociation allowed, so LLVM sums in
    vector lanes (the kernel's own flags forbid it); the order of the sum depends on the
    row and the vector width, not on the thread count. Reference: sum(row)."""
    total = 0.0
    for j in range(row.shape[0]):
        total += row[j]
    return total


# ---------------------------------------------------------------------------- kernels
@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def _forward_kernel(lam, inv_lam, delta, scale, v, init, resets, reverse, zoh, splits, out, sink):  # pragma: no cover
    """out (B, L, P): the states. lam, inv_lam, delta (P,) as in the row functions; sink as
    in scan/cpu.py. A reverse scan goes block by block, each block's v and out rows touched
    in ascending order first (as in scan/cpu.py)."""
    batch, length, size = v.shape
    blocks = (length + _BLOCK - 1) // _BLOCK
    for task in prange(batch * splits):
        b, _, lo, hi = task_span(task, splits, size)
        lam_bar = np.empty(hi - lo, dtype=v.dtype)
        gamma = np.empty(hi - lo, dtype=v.dtype)
        x = init[b, lo:hi].copy()  # the carried state
        touched = 0.0
        for q in range(blocks):
            k0 = (blocks - 1 - q if reverse else q) * _BLOCK
            rows = min(_BLOCK, length - k0)
            if reverse:
                touched += touch_rows(v, b, k0, rows, lo, hi) + touch_rows(out, b, k0, rows, lo, hi)
            for i in range(rows):
                k = k0 + (rows - 1 - i if reverse else i)
                _discretize_row(lam[lo:hi], inv_lam[lo:hi], delta[lo:hi], scale[b, k], zoh, lam_bar, gamma)
                if resets[b, k]:
                    x[:] = 0
                _step_row(lam_bar, gamma, x, v[b, k, lo:hi], out[b, k, lo:hi])
        sink[task] = touched


@numba.njit(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath=_FLAGS)
def _backward_kernel(lam, inv_lam, delta, scale, v, states, init, resets, reverse, zoh, splits, grad,
                     in_place, d_v, acc, d_scale, d_init, sink):  # pragma: no cover - compiled  # fmt: skip
    """The reverse scan with Λ̄, γ recomputed: d_v (B, L, P), is grad if in_place; acc
    (B, 3, P) complex128 zeros, the sums of the gradient rows (one row per sequence, see
    `finalize`); d_scale (splits, B, L) float64, one row per block of states; d_init (B, P);
    sink as in scan/cpu.py (bridge.touch_rows).

    For a forward scan the adjoint walks memory backwards, which prefetchers that follow
    only ascending streams do not help; that walk goes block by block (_BLOCK steps), each
    block's dx, v, x_{k-1} and d v rows touched in ascending order first (as in
    scan/cpu.py)."""
    batch, length, size = v.shape
    blocks = (length + _BLOCK - 1) // _BLOCK
    backwards = not reverse  # the adjoint of a forward scan walks backwards through memory
    for task in prange(batch * splits):
        b, split, lo, hi = task_span(task, splits, size)
        lam_bar = np.empty(hi - lo, dtype=v.dtype)
        gamma = np.empty(hi - lo, dtype=v.dtype)
        zeros = np.zeros(hi - lo, dtype=v.dtype)  # the carried state at a reset
        carry = np.zeros(hi - lo, dtype=np.complex128)  # conj(Λ̄_{k+1}) g_{k+1}
        qg = np.empty(hi - lo, dtype=np.complex128)  # g, then conj(inv²) g (bilinear)
        sums = np.zeros((3, hi - lo), dtype=np.complex128)
        d_s_row = np.empty(hi - lo, dtype=np.float64)
        lam_delta = np.empty(hi - lo, dtype=np.complex128)  # conj(Λ)·Δ
        for j in range(hi - lo):
            lam_delta[j] = np.conj(np.complex128(lam[lo + j])) * np.float64(delta[lo + j])
        start = init[b, lo:hi]  # x_{-1}
        edge = 0 if backwards else length - 1  # the step whose x_prev is the initial state
        touched = 0.0
        for q in range(blocks):
            k0 = (blocks - 1 - q if backwards else q) * _BLOCK
            rows = min(_BLOCK, length - k0)
            if backwards:
                touched += touch_rows(grad, b, k0, rows, lo, hi) + touch_rows(v, b, k0, rows, lo, hi)
                touched += touch_rows(states, b, k0 - 1, rows, lo, hi)
                if not in_place:
                    touched += touch_rows(d_v, b, k0, rows, lo, hi)
            for i in range(rows):
                k = k0 + (rows - 1 - i if backwards else i)  # against the scan's direction
                s = scale[b, k]
                _discretize_row(lam[lo:hi], inv_lam[lo:hi], delta[lo:hi], s, zoh, lam_bar, gamma)
                x_prev = start if k == edge else states[b, k - 1 if backwards else k + 1, lo:hi]
                x_prev = zeros if resets[b, k] else x_prev
                g = grad[b, k, lo:hi]
                dv = g if in_place else d_v[b, k, lo:hi]
                _adjoint_recurrence_row(zoh, lam_bar, gamma, g, carry, dv, qg)
                _adjoint_sums_row(zoh, lam_delta, delta[lo:hi], s, v[b, k, lo:hi], x_prev, carry if zoh else qg, dv,
                                  sums, d_s_row)  # fmt: skip
                if resets[b, k]:
                    carry[:] = 0
                d_scale[split, b, k] = _row_sum(d_s_row)
        acc[b, :, lo:hi] = sums
        d_init[b, lo:hi] = carry
        sink[task] = touched


def _arrays(Lambda, delta, scale, initial_state, v):
    """The kernels' inputs as NumPy arrays (bridge.as_array) in v's precision: Λ, 1/Λ (computed
    in complex128) and Δ (P,); scale (B, L); and the initial state (B, P), zeros if None."""
    lam = Lambda.detach().to(torch.complex128)
    as_numpy = lambda t, dtype: as_array(t.to(dtype))  # noqa: E731
    return (as_numpy(lam, v.dtype), as_numpy(1 / lam, v.dtype), as_numpy(delta, v.real.dtype),
            as_numpy(scale, v.real.dtype), state_array(initial_state, v.shape[0], v.shape[2], v.dtype))  # fmt: skip


def finalize(acc: torch.Tensor, Lambda: torch.Tensor, delta: torch.Tensor, zoh: bool):
    """(dΛ complex (P,), dΔ real (P,)) from the kernel's sums acc (3, P) complex128
    (`_adjoint_sums_row`), in float64 until the final cast."""
    lam, step = Lambda.detach().to(torch.complex128), delta.detach().to(torch.float64)
    first, second, third = acc
    if zoh:
        d_lam = step * first + (1 / lam).conj() * (step * second - third)
    else:
        d_lam = step * first + step**2 * third
    d_delta = (lam.conj() * first + second).real
    return d_lam.to(Lambda.dtype), d_delta.to(delta.dtype)


def _forward_impl(Lambda, delta, scale, v, initial_state, resets, reverse: bool, zoh: bool) -> torch.Tensor:
    lam, inv_lam, dl, sc, init = _arrays(Lambda, delta, scale, initial_state, v)
    v = v.contiguous()
    out = output_like(v)
    batch, length, size = v.shape
    splits = _splits(batch, size)
    _forward_kernel(lam, inv_lam, dl, sc, as_array(v), init, flags(resets, batch, length), reverse, zoh,
                    splits, writable(out), sink(batch, splits))  # fmt: skip
    return out


def _backward_impl(
    Lambda, delta, scale, v, states, initial_state, resets, reverse: bool, zoh: bool, grad, in_place: bool = False
):
    """(dΛ, dΔ, d scale, d v, d initial_state); in_place: d v is written over `grad`
    (contiguous, owned by the caller: the kernel reads each element of grad before it
    writes the same element of d v)."""
    lam, inv_lam, dl, sc, init = _arrays(Lambda, delta, scale, initial_state, v)
    batch, length, size = v.shape
    splits = _splits(batch, size)
    d_v = grad if in_place else output_like(v)
    acc = torch.zeros(batch, 3, size, dtype=torch.complex128)
    d_scale = np.zeros((splits, batch, length), dtype=np.float64)
    d_init = np.empty_like(init)
    _backward_kernel(
        lam, inv_lam, dl, sc, as_array(v), as_array(states), init, flags(resets, batch, length), reverse, zoh,
        splits, as_array(grad), in_place, writable(d_v), acc.numpy(), d_scale, d_init, sink(batch, splits),
    )  # fmt: skip
    d_lam, d_delta = finalize(acc.sum(dim=0), Lambda, delta, zoh)
    return d_lam, d_delta, torch.from_numpy(d_scale.sum(axis=0)).to(scale.dtype), d_v, torch.from_numpy(d_init)


def forward_fake(Lambda, delta, scale, v, initial_state, resets, reverse, zoh):
    return output_like(v)


def backward_fake(Lambda, delta, scale, v, states, initial_state, resets, reverse, zoh, grad):
    batch, _, size = v.shape
    return (torch.empty_like(Lambda), torch.empty_like(delta), torch.empty_like(scale), output_like(v),
            v.new_empty(batch, size))  # fmt: skip


# The ops' signatures and shapes, shared with triton_irregular.py (same arguments, same results)
FORWARD_SCHEMA = ("(Tensor Lambda, Tensor delta, Tensor scale, Tensor v, Tensor? initial_state, Tensor? resets, "
                  "bool reverse, bool zoh) -> Tensor")  # fmt: skip
BACKWARD_SCHEMA = ("(Tensor Lambda, Tensor delta, Tensor scale, Tensor v, Tensor states, Tensor? initial_state, "
                   "Tensor? resets, bool reverse, bool zoh, Tensor grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")


def backward_inputs(inputs: tuple, states: torch.Tensor) -> tuple:
    """The arguments of a backward kernel before grad: the forward's, the states after v."""
    return (*inputs[:4], states, *inputs[4:])


_irregular_scan = differentiable(
    KernelOp("irregular_scan_forward", _forward_impl, FORWARD_SCHEMA, forward_fake),
    KernelOp("irregular_scan_backward", _backward_impl, BACKWARD_SCHEMA, backward_fake), backward_inputs,
)


def check_inputs(Lambda, delta, scale, v, initial_state, resets) -> None:
    """Raise on a wrong type, dtype, shape or device, naming the argument."""
    v = expect_tensor("v", v)
    expect_dtype("v", v, (torch.complex64, torch.complex128))
    expect_shape("v", v, (None, None, None), "BLP")
    batch, length, size = v.shape
    expect_dtype("Lambda", expect_tensor("Lambda", Lambda), v.dtype)
    expect_shape("Lambda", Lambda, (size,), "P")
    expect_dtype("delta", expect_tensor("delta", delta), (torch.float32, torch.float64))
    expect_shape("delta", delta, (size,), "P")
    expect_dtype("scale", expect_tensor("scale", scale), (torch.float32, torch.float64))
    expect_shape("scale", scale, (batch, length), "BL")
    for name, tensor in (("Lambda", Lambda), ("delta", delta), ("scale", scale)):
        expect_same_device(name, tensor, v)
    if initial_state is not None:
        expect_dtype("initial_state", expect_tensor("initial_state", initial_state), v.dtype)
        expect_shape("initial_state", initial_state, (batch, size), "BP")
        expect_same_device("initial_state", initial_state, v)
    if resets is not None:
        expect_same_device("resets", expect_bool_mask("resets", resets, batch, length), v)


def irregular_scan(
    Lambda: torch.Tensor,
    delta: torch.Tensor,
    scale: torch.Tensor,
    v: torch.Tensor,
    method: str = "zoh",
    *,
    initial_state: torch.Tensor | None = None,
    resets: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """States of x_k = Λ̄(Δ s_k) x_{k-1} + γ(Δ s_k) v_k, discretised inside the kernels.

    Same recurrence, resets and reverse semantics as `linear_scan` (scan/reference.py) on
    `discretize(Λ, ·, method, s)`: in reverse, Λ̄_k (from s_k) multiplies x_{k+1}.
    Differentiable w.r.t. Lambda, delta, scale, v and initial_state.

    Args:
        Lambda: complex (P,) continuous eigenvalues, v's dtype.
        delta: real (P,) steps Δ (exp(log_step) · step_rescale).
        scale: real (B, L) step_scale per step (0 at a step to skip).
        v: complex64/128 (B, L, P) B~u, before discretisation; CPU.
        method: "zoh" or "bilinear".
        initial_state: complex (B, P) or None; resets: bool (B, L) or None; reverse: bool.

    Returns:
        complex (B, L, P) states.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_inputs(Lambda, delta, scale, v, initial_state, resets)
    if v.device.type != "cpu":
        raise ValueError(f"v is on {v.device}: irregular_scan runs on CPU tensors")
    real = v.real.dtype
    delta, scale = delta.to(real), scale.to(real)
    zoh = method == "zoh"
    return _irregular_scan(Lambda, delta, scale, v, initial_state, resets, reverse, zoh)
