"""The discretisation in numba, for kernels that compute Λ̄ and γ themselves (the
irregular scan, the streaming step): one row of states at a time, in the precision of
the data (float32 for complex64, as torch's complex64 discretisation; float64 for
complex128). Its reference is s5ssm.discretize (tested).

    zoh:       Λ̄ = exp(Λw),                  γ = expm1(Λw) / Λ
    bilinear:  Λ̄ = (1 + Λw/2) / (1 - Λw/2),  γ = w / (1 - Λw/2)      w = Δ·s

numba compiles math.exp, math.sin, ... to libm calls, which keep a loop scalar, so
`exp_expm1` and `sincos` are straight-line polynomial code that LLVM vectorises over the
states (4 float64 or 8 float32 lanes with AVX2). Their references are math.exp,
math.expm1, math.sin and math.cos (tested).

Every function here is inlined into the kernels that call it, and numba's on-disk cache
of a kernel is refreshed only when the kernel's own file changes: after editing this
file, clear the caches (`find src -name '*.nb[ic]' -delete`); the test suite does that
itself when a kernel source changed (tests/conftest.py).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload


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


def precision(array):  # pragma: no cover - replaced by the overload in compiled code
    """The _Precision of a float32 or float64 array's dtype (a compile-time constant)."""
    raise NotImplementedError("only callable from numba-compiled code")


@overload(precision)
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
def zoh_row(lam, inv_lam, delta, s, c, lam_bar, gamma):  # pragma: no cover - compiled
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
def bilinear_row(lam, delta, s, c, lam_bar, gamma):  # pragma: no cover - compiled
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
def discretize_row(lam, inv_lam, delta, s, zoh, lam_bar, gamma):  # pragma: no cover - compiled
    """Fill lam_bar, gamma (n,) with Λ̄, γ at step scale s (the reference: s5ssm.discretize)."""
    if zoh:
        zoh_row(lam, inv_lam, delta, s, precision(delta), lam_bar, gamma)
    else:
        bilinear_row(lam, delta, s, precision(delta), lam_bar, gamma)
