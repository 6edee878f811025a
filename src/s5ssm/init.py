"""Initialisation of S5 (Smith et al., ICLR 2023, section 4 and appendix B).

HiPPO-LegS is made normal by adding a rank-one term, S = A + p pᵀ, whose diagonalisation
S = V Λ V^H gives the HiPPO-N eigenvalues Λ and the unitary eigenvectors V. The layer works
in the eigenbasis: B~ = V^-1 B, C~ = C V. Random draws follow the official JAX code
(lindermanlab/S5, s5/ssm_init.py) including its fan-in conventions:

    B  (P_full, H) lecun_normal, fan_in = P_full
    C  (H, P_full) complex, real and imaginary parts lecun_normal on a (H, P_full, 2) array:
       fan_in = H·P_full ("lecun_normal") or P_full per row ("trunc_standard_normal")
    C  (H, P) complex normal with std sqrt(1/2) per part ("complex_normal", no V)

P_full is the full state size; P = P_full/2 states are kept when conjugate symmetry is on.
Random numbers come from torch (seed with torch.manual_seed or pass a torch.Generator);
the eigendecomposition is done once, in float64 NumPy.
"""

from __future__ import annotations

import math

import numpy as np
import torch

C_INITS = ("trunc_standard_normal", "lecun_normal", "complex_normal")

# JAX's variance_scaling "truncated_normal" divides by the std of a standard normal
# truncated to [-2, 2], so that the truncated draw has the requested variance.
_TRUNCATED_STD = 0.87962566103423978


def hippo_legs(N: int) -> np.ndarray:
    """HiPPO-LegS matrix, float64 (N, N).

    A[n, k] = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 for n < k.
    """
    q = np.sqrt(1.0 + 2.0 * np.arange(N))
    A = np.tril(np.outer(q, q)) - np.diag(np.arange(N, dtype=np.float64))
    return -A


def hippo_normal(N: int) -> np.ndarray:
    """The normal part S = A + p pᵀ of HiPPO-LegS, p_n = sqrt(n + 1/2). float64 (N, N).

    S = -I/2 + (skew-symmetric), so it is normal and diagonalisable by a unitary matrix.
    """
    p = np.sqrt(np.arange(N) + 0.5)
    return hippo_legs(N) + np.outer(p, p)


def hippo_n(N: int) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-N eigenvalues and eigenvectors of one block.

    Returns:
        Lambda: complex128 (N,), Re = mean(diag S) = -1/2, Im ascending.
        V: complex128 (N, N), unitary, S ≈ V diag(Lambda) V^H.
    """
    S = hippo_normal(N)
    skew = (S - S.T) / 2
    Lambda_im, V = np.linalg.eigh(-1j * skew)  # -i·skew is Hermitian
    Lambda = np.mean(np.diag(S)) + 1j * Lambda_im
    return Lambda, V


def block_diagonal_init(
    state_size: int, blocks: int, conj_sym: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Λ, V and V^-1 for J = `blocks` copies of the HiPPO-N block of size N = state_size / J.

    With conj_sym only the first N/2 eigenpairs of each block are kept (their conjugates
    are implied), so P = state_size / 2.

    Returns:
        Lambda: complex128 (P,); V: complex128 (state_size, P); Vinv: complex128 (P, state_size).
    """
    if blocks < 1 or state_size % blocks:
        raise ValueError(
            f"state_size ({state_size}) must be a positive multiple of blocks ({blocks})"
        )
    N = state_size // blocks
    if conj_sym and N % 2:
        raise ValueError(
            f"conj_sym needs an even block size state_size/blocks, got {state_size}/{blocks} = {N}"
        )
    Lambda, V = hippo_n(N)
    keep = N // 2 if conj_sym else N
    Lambda, V = Lambda[:keep], V[:, :keep]
    Lambda_all = np.tile(Lambda, blocks)
    V_all = np.zeros((state_size, keep * blocks), dtype=np.complex128)
    for j in range(blocks):
        V_all[j * N : (j + 1) * N, j * keep : (j + 1) * keep] = V
    return Lambda_all, V_all, V_all.conj().T


def lecun_normal(shape: tuple[int, ...], fan_in: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Truncated normal with variance 1/fan_in (JAX's lecun_normal), float64."""
    out = torch.empty(shape, dtype=torch.float64)
    torch.nn.init.trunc_normal_(out, 0.0, 1.0, -2.0, 2.0, generator=generator)
    return out * (math.sqrt(1.0 / fan_in) / _TRUNCATED_STD)


def init_B(Vinv: np.ndarray, hidden_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """B~ = V^-1 B with B (P_full, H) lecun_normal. Returns float64 (P, H, 2): real, imag."""
    full = Vinv.shape[1]
    B = lecun_normal((full, hidden_size), fan_in=full, generator=generator).numpy()
    B_tilde = Vinv @ B
    return torch.from_numpy(np.stack([B_tilde.real, B_tilde.imag], axis=-1))


def init_C(
    V: np.ndarray,
    hidden_size: int,
    C_init: str = "trunc_standard_normal",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """C~ = C V (or a direct complex draw for "complex_normal"). Returns float64 (H, P, 2)."""
    full, kept = V.shape
    if C_init == "complex_normal":
        return torch.randn((hidden_size, kept, 2), dtype=torch.float64, generator=generator) * math.sqrt(0.5)
    if C_init == "lecun_normal":
        C = lecun_normal((hidden_size, full, 2), fan_in=hidden_size * full, generator=generator)
    elif C_init == "trunc_standard_normal":
        C = lecun_normal((hidden_size, full, 2), fan_in=full, generator=generator)
    else:
        raise ValueError(f"C_init must be one of {C_INITS}, got {C_init!r}")
    C_tilde = (C[..., 0].numpy() + 1j * C[..., 1].numpy()) @ V
    return torch.from_numpy(np.stack([C_tilde.real, C_tilde.imag], axis=-1))


def init_log_step(
    size: int, dt_min: float = 0.001, dt_max: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log Δ_p ~ U[log dt_min, log dt_max], one per kept state. float64 (P,)."""
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
    u = torch.rand(size, dtype=torch.float64, generator=generator)
    return u * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
