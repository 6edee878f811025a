"""The S5 layer's core, one operation behind one signature: discretise, project in, scan
(both directions when bidirectional), project out.

    Δ_k        = exp(log_step) · s_k                          s: step_scale (float, (B,) or (B, L))
    Λ̄_k, γ_k   = discretize(Λ, Δ_k)                          zoh or bilinear (s5ssm.discretize)
    x_k        = Λ̄_k ⊙ x_{k-1} + γ_k ⊙ (B~ u_k)              forward; x_{-1} = initial_state
    x'_k       = Λ̄_k ⊙ x'_{k+1} + γ_k ⊙ (B~ u_k)             reverse (bidirectional), x'_L = 0
    y_k        = c·Re(C~_1 x_k) [+ c·Re(C~_2 x'_k)] + D ⊙ u_k  c = 2 with conj_sym, else 1

`s5_core_reference` writes exactly this in torch ops (complex matmuls, the sequential
scan of reference.py); every backend in `CORES` computes the same with the same
signature, and tests/test_core.py compares each with it, values and gradients.

It lives in scan/ beside the kernels it dispatches to, as mamba's ops/ holds
selective_scan_fn beside selective_scan_ref: S5SSM (ssm.py) keeps the parameters and
checks the arguments, and calls `s5_core`.

Arguments, shared by `s5_core`, `s5_core_reference` and every entry of `CORES`:
    u               real (B, L, H)
    Lambda          complex (P,): the continuous eigenvalues Λ (complex64 for float32 u)
    log_step        real (P,): log Δ
    B               real (P, H, 2): B~ as (re, im) pairs
    C               tuple of real (H, P, 2), C~ as (re, im) pairs: one per direction
                    (forward, then reverse)
    D               real (H,)
    method          "zoh" | "bilinear"
    conj_sym        True: y takes 2·Re(C~ x) (one of each conjugate pair of states is kept)
    step_scale      float, real (B,) per sequence, or real (B, L) per step (0: a step that
                    leaves the state unchanged). Positive elsewhere.
    initial_state   complex (B, P) or None (zeros): the forward direction's x_{-1}
    resets          bool (B, L) or None: clear the forward state before step k
    reverse_resets  bool (B, L) or None: clear the reverse state before step k
    padding         bool (B, L) or None: right padding; B̄u is 0 where False
    return_states   also return the forward direction's states, complex (B, L, P)
Returns y real (B, L, H), or (y, states).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import is_compiling
from ..discretize import discretize
from ..precision import autocast_enabled
from . import cpu, cpu_layer, irregular, parallel, reference, resolve_backend


def s5_core_reference(
    u, Lambda, log_step, B, C, D, *, method, conj_sym, step_scale,
    initial_state=None, resets=None, reverse_resets=None, padding=None, return_states=False,
):  # fmt: skip
    """The core in plain torch ops, line by line the equations of the module docstring."""
    lambda_bar, gamma = discretize(Lambda, log_step, method, step_scale)  # (P,), (B, 1, P) or (B, L, P)
    bu = gamma * (u.to(Lambda.dtype) @ torch.view_as_complex(B.contiguous()).T)  # B̄u (B, L, P)
    if padding is not None:
        bu = bu * padding[..., None]
    states = [reference.scan(lambda_bar, bu, initial_state, False, resets)]
    if len(C) == 2:
        states.append(reference.scan(lambda_bar, bu, None, True, reverse_resets))
    c = 2.0 if conj_sym else 1.0
    y = D * u
    for x, C_d in zip(states, C):
        y = y + c * (x @ torch.view_as_complex(C_d.contiguous()).T).real
    return (y, states[0]) if return_states else y


# ---------------------------------------------------------------------------- projections
def input_weight(B: torch.Tensor, gamma: torch.Tensor | None = None) -> torch.Tensor:
    """B~ (P, H, 2), optionally scaled to B̄ = γ B~ by a complex (P,) γ, as a real (2P, H)
    matrix whose rows interleave (re, im)."""
    if gamma is not None:  # γ shared by every step: folded into the weight, no per-step pass
        B = torch.view_as_real(gamma[:, None] * torch.view_as_complex(B.contiguous()))
    return B.transpose(1, 2).reshape(2 * B.shape[0], B.shape[1])


def output_weights(C: tuple[torch.Tensor, ...], conj_sym: bool) -> list[torch.Tensor]:
    """c·Re(C~ x) as real (H, 2P) matrices acting on interleaved (re, im) states, one per
    direction (C: real (H, P, 2) each; c = 2 with conj_sym, else 1)."""
    scale = 2.0 if conj_sym else 1.0
    sign = torch.tensor([scale, -scale], dtype=C[0].dtype, device=C[0].device)
    return [(C_d * sign).reshape(C_d.shape[0], 2 * C_d.shape[1]) for C_d in C]


def complex_linear(u: torch.Tensor, w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """F.linear(u, w) for a weight with interleaved (re, im) rows (2P, H), as complex
    (..., P) in the real `dtype`'s precision: under autocast the GEMM runs in its lower
    precision and the scan still gets complex64 (complex128 for float64), whatever
    autocast's op lists on the device do with view_as_complex (the CPU's cast it up)."""
    return torch.view_as_complex(F.linear(u, w).to(dtype).unflatten(-1, (w.shape[0] // 2, 2)))


def _project_out(states: list[torch.Tensor], u: torch.Tensor, w_outs: list[torch.Tensor], D: torch.Tensor):
    """y = Σ_directions W_out x + D ⊙ u: complex (B, L, P) states -> real (B, L, H)."""
    outs = [F.linear(torch.view_as_real(x).flatten(-2), w) for x, w in zip(states, w_outs)]
    return torch.addcmul(outs[0] if len(outs) == 1 else outs[0] + outs[1], u, D)


def _per_step(step_scale) -> bool:
    return isinstance(step_scale, torch.Tensor) and step_scale.dim() == 2


# ---------------------------------------------------------------------------- the backends
def _separate_ops(
    scan, irregular_scan, u, Lambda, log_step, B, C, D, *, method, conj_sym, step_scale,
    initial_state=None, resets=None, reverse_resets=None, padding=None, return_states=False,
):  # fmt: skip
    """The core as separate autograd ops: the input GEMM, one `scan(lambda_bar, bu,
    initial_state, reverse, resets)` per direction, the output GEMMs.

    A per-step step_scale goes to `irregular_scan` when the backend has one (its kernels
    discretise per step: Λ̄, γ never stored as (B, L, P)); every other case discretises
    first, with γ folded into the input weight when it is shared by every step."""
    if irregular_scan is not None and _per_step(step_scale):
        v = complex_linear(u, input_weight(B), D.dtype)  # B~u
        if padding is not None:
            v = v * padding[..., None]
        delta = torch.exp(log_step)

        def run(state, flags, reverse):
            return irregular_scan(Lambda, delta, step_scale, v, method, initial_state=state, resets=flags,
                                  reverse=reverse)  # fmt: skip
    else:
        lambda_bar, gamma = discretize(Lambda, log_step, method, step_scale)
        folded = gamma.dim() == 1
        bu = complex_linear(u, input_weight(B, gamma if folded else None), D.dtype)
        bu = bu if folded else bu * gamma
        if padding is not None:
            bu = bu * padding[..., None]

        def run(state, flags, reverse):
            return scan(lambda_bar, bu, state, reverse, flags)

    states = [run(initial_state, resets, False)]
    if len(C) == 2:
        states.append(run(None, reverse_resets, True))
    y = _project_out(states, u, output_weights(C, conj_sym), D)
    return (y, states[0]) if return_states else y


def fuses(u: torch.Tensor, step_scale, return_states: bool) -> bool:
    """Whether the "cpu" backend runs the core as one fused Function (scan.cpu_layer).

    It does not (and takes the separate ops, with the compiled scans) for: the states
    (return_states; cpu_layer keeps none), a per-sequence step_scale (B,) (cpu_layer has
    no Λ̄ of shape (B, 1, P)), torch.compile (which sees the separate registered ops, not
    the Function) and autocast (whose lower-precision GEMMs the separate ops take)."""
    if return_states or is_compiling() or autocast_enabled(u.device.type):
        return False
    return not isinstance(step_scale, torch.Tensor) or step_scale.dim() == 2


def _cpu_core(u, Lambda, log_step, B, C, D, *, method, conj_sym, step_scale, initial_state=None, resets=None,
              reverse_resets=None, padding=None, return_states=False):  # fmt: skip
    """The compiled CPU kernels: cpu_layer's fused Function where `fuses`, else the separate
    ops with cpu.scan and irregular.irregular_scan."""
    if not fuses(u, step_scale, return_states):
        return _separate_ops(
            cpu.scan, irregular.irregular_scan, u, Lambda, log_step, B, C, D, method=method, conj_sym=conj_sym,
            step_scale=step_scale, initial_state=initial_state, resets=resets, reverse_resets=reverse_resets,
            padding=padding, return_states=return_states,
        )  # fmt: skip
    if _per_step(step_scale):
        kernel = cpu_layer.Irregular(Lambda, torch.exp(log_step), step_scale, method == "zoh")
        w_in = input_weight(B)
    else:
        lambda_bar, gamma = discretize(Lambda, log_step, method, step_scale)
        kernel, w_in = cpu_layer.Invariant(lambda_bar), input_weight(B, gamma)
    return cpu_layer.s5_core(kernel, u, w_in, output_weights(C, conj_sym), D, initial_state, resets, reverse_resets,
                             padding)  # fmt: skip


def _parallel_core(*args, **kwargs):
    """The associative scan in torch ops (parallel.py), any device."""
    return _separate_ops(parallel.scan, None, *args, **kwargs)


def _triton_core(*args, **kwargs):
    """The Triton kernels (triton_scan.py; triton_irregular.py for a per-step step_scale),
    imported on first use."""
    from . import triton_irregular, triton_scan

    return _separate_ops(triton_scan.scan, triton_irregular.irregular_scan, *args, **kwargs)


# One entry per concrete backend (scan.resolve_backend), each with the signature above.
CORES = {"reference": s5_core_reference, "parallel": _parallel_core, "cpu": _cpu_core, "triton": _triton_core}


def s5_core(u, Lambda, log_step, B, C, D, *, backend: str = "auto", **options):
    """The core on `backend` ("auto" | "cpu" | "parallel" | "reference" | "triton", as in
    linear_scan); keyword options and result as in the module docstring."""
    return CORES[resolve_backend(backend, u.device)](u, Lambda, log_step, B, C, D, **options)
