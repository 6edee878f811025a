"""Shared helpers: an independent, loop-by-loop restatement of the S5 layer (paper eqs.);
the `cuda` marker and Triton's interpreter where there is no GPU.

`naive_ssm` reads a layer's parameters and recomputes its output with plain complex
arithmetic (closed-form discretisation, a Python loop over time); it shares no code with
s5ssm beyond reading the parameter tensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # The triton backend's kernels then run in Triton's interpreter on CPU tensors
    # (tests/test_scan_triton.py); it must be on before triton is first imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def clear_stale_numba_caches() -> None:
    """numba refreshes a kernel's on-disk cache (*.nbi, *.nbc) only when the kernel's own
    file changes, not the files of the helpers it inlines (scan/bridge.py,
    scan/discretize_kernel.py): when any source under scan/ or streaming/ changed since the
    caches were written, all of the package's caches go, so no test runs a stale kernel."""
    root = Path(importlib.util.find_spec("s5ssm").origin).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("scan/*.py"), *root.glob("streaming/*.py")]):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    stamp = root / "scan" / "__pycache__" / "kernel-sources.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest.hexdigest():
            return
        for cache in root.rglob("*.nb[ic]"):
            cache.unlink(missing_ok=True)
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_text(digest.hexdigest())
    except OSError:  # a read-only install: its sources do not change either
        pass


clear_stale_numba_caches()


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` need a CUDA GPU (benchmarks/gpu.sh runs them): skipped without one."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def complex_param(t: torch.Tensor) -> torch.Tensor:
    """(..., 2) real/imag -> complex128."""
    t = t.detach().double()
    return torch.complex(t[..., 0], t[..., 1])


def naive_ssm(layer, u, step_scale=None, state=None, reverse_only=False):
    """One S5SSM forward by the paper's equations, complex128, no mask/resets.

    u: (B, L, H) real; step_scale: None, float, (B,) or (B, L).
    Returns (y (B, L, H) float64, final forward state (B, P) complex128).
    """
    u = u.detach().double()
    batch, length, _ = u.shape
    re = layer.Lambda_re.detach().double()
    if layer.clip_eigs:
        re = re.clamp(max=-1e-4)
    Lam = torch.complex(re, layer.Lambda_im.detach().double())
    step = torch.exp(layer.log_step.detach().double()) * layer.step_rescale
    if step_scale is None:
        delta = step.expand(batch, length, -1)
    elif isinstance(step_scale, (int, float)):
        delta = (step * step_scale).expand(batch, length, -1)
    elif step_scale.dim() == 1:
        delta = (step_scale.double()[:, None, None] * step).expand(batch, length, -1)
    else:
        delta = step_scale.double()[..., None] * step
    if layer.discretization == "zoh":
        lam_bar = torch.exp(Lam * delta)
        gamma = (lam_bar - 1) / Lam
    else:
        lam_bar = (1 + delta * Lam / 2) / (1 - delta * Lam / 2)
        gamma = delta / (1 - delta * Lam / 2)
    Bt = complex_param(layer.B)  # (P, H)
    bu = gamma * torch.einsum("ph,blh->blp", Bt, u.to(torch.complex128))
    if layer.bidirectional:
        if hasattr(layer, "C1"):
            Cs = [complex_param(layer.C1), complex_param(layer.C2)]
        else:
            C = complex_param(layer.C)
            Cs = [C[:, : C.shape[1] // 2], C[:, C.shape[1] // 2 :]]
    else:
        Cs = [complex_param(layer.C)]
    x = torch.zeros(batch, bu.shape[-1], dtype=torch.complex128) if state is None else state.clone()
    fwd = []
    for k in range(length):
        x = lam_bar[:, k] * x + bu[:, k]
        fwd.append(x)
    final = x
    xs = [torch.stack(fwd, 1)]
    if layer.bidirectional:
        x = torch.zeros_like(x)
        bwd = [None] * length
        for k in reversed(range(length)):
            x = lam_bar[:, k] * x + bu[:, k]
            bwd[k] = x
        xs.append(torch.stack(bwd, 1))
    scale = 2.0 if layer.conj_sym else 1.0
    y = sum(scale * torch.einsum("hp,blp->blh", C, x_).real for C, x_ in zip(Cs, xs))
    return y + layer.D.detach().double() * u, final


def run_steps(layer, u, state=None, step_scale=None):
    """Call layer.step over time. step_scale may be None, float, (B,) or (B, L)."""
    ys = []
    for k in range(u.shape[1]):
        s = step_scale[:, k] if isinstance(step_scale, torch.Tensor) and step_scale.dim() == 2 else step_scale
        y, state = layer.step(u[:, k], state, step_scale=s)
        ys.append(y)
    return torch.stack(ys, 1), state


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
