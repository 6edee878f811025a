"""The S5 layer in JAX the way the paper's code writes it: the anchor of `s5ssm bench`.

An executable reading of lindermanlab/S5, s5/ssm.py (conj_sym, unidirectional, zoh):

    discretize_zoh:  Λ̄ = exp(ΛΔ),  B̄ = (1/Λ · (Λ̄ - 1))[:, None] · B~
    apply_ssm:       Lambda_elements = Λ̄ · ones((L, P))          Λ̄ tiled to L×P
                     Bu_elements     = vmap(lambda u: B̄ @ u)(u)   complex (L, P)
                     _, xs = jax.lax.associative_scan(binary_operator, (Lambda_elements, Bu_elements))
                     ys = vmap(lambda x: 2 * (C~ @ x).real)(xs)
    S5SSM.__call__:  ys + vmap(lambda u: D * u)(u)

one sequence at a time, vmapped over the batch (the paper's models are nn.vmap'd) and
jit-compiled. Parameters use the official layout (Lambda_re, Lambda_im (P,), B (P, H, 2),
C (H, P, 2), D (H,), log_step (P,)), taken from an s5ssm S5SSM so both compute the same
function; the discretisation runs inside the jitted call, as in the module's setup.
Nothing here is used by the library: it exists to be timed against.
"""

from __future__ import annotations

import numpy as np


def _jax():
    import jax
    import jax.numpy as jnp

    return jax, jnp


def binary_operator(q_i, q_j):
    """(a_i, b_i) • (a_j, b_j) = (a_j a_i, a_j b_i + b_j) on P-vectors (the official code
    decorates it with @jax.vmap; here it is wrapped at the call)."""
    a_i, b_i = q_i
    a_j, b_j = q_j
    return a_j * a_i, a_j * b_i + b_j


def scan_fn():
    """jit(vmap(associative_scan)) over a batch: (lam complex (P,), bu complex (B, L, P)) -> xs."""
    jax, jnp = _jax()

    def one(lam, bu_seq):
        elements = lam * jnp.ones((bu_seq.shape[0], lam.shape[0]), dtype=lam.dtype)
        return jax.lax.associative_scan(jax.vmap(binary_operator), (elements, bu_seq))[1]

    return jax.jit(jax.vmap(one, in_axes=(None, 0)))


def scan_grad_fn():
    """jit(value_and_grad) of sum(Re(xs · conj(g))) w.r.t. (lam, bu): the scan's forward+backward."""
    jax, jnp = _jax()
    scan = scan_fn()

    def loss(lam, bu, g):
        return jnp.sum((scan(lam, bu) * jnp.conj(g)).real)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def layer_params(layer) -> dict:
    """The official parameter layout, as numpy arrays, from an s5ssm S5SSM (conj_sym, unidirectional)."""
    if layer.bidirectional or not layer.conj_sym or layer.discretization != "zoh" or layer.clip_eigs:
        raise ValueError("the JAX reference covers the paper's default layer: conj_sym, zoh, unidirectional")
    get = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    return {
        "Lambda_re": get(layer.Lambda_re),
        "Lambda_im": get(layer.Lambda_im),
        "B": get(layer.B),
        "C": get(layer.C),
        "D": get(layer.D),
        "log_step": get(layer.log_step),
        "step_rescale": np.float32(layer.step_rescale),
    }


def _apply_layer(params, u_seq):
    """S5SSM.__call__ of the official code on one sequence u_seq real (L, H) -> (L, H)."""
    jax, jnp = _jax()
    Lambda = params["Lambda_re"] + 1j * params["Lambda_im"]
    B_tilde = params["B"][..., 0] + 1j * params["B"][..., 1]
    C_tilde = params["C"][..., 0] + 1j * params["C"][..., 1]
    step = params["step_rescale"] * jnp.exp(params["log_step"])
    # discretize_zoh
    Identity = jnp.ones(Lambda.shape[0])
    Lambda_bar = jnp.exp(Lambda * step)
    B_bar = (1 / Lambda * (Lambda_bar - Identity))[..., None] * B_tilde
    # apply_ssm
    Lambda_elements = Lambda_bar * jnp.ones((u_seq.shape[0], Lambda_bar.shape[0]))
    Bu_elements = jax.vmap(lambda u: B_bar @ u)(u_seq)
    _, xs = jax.lax.associative_scan(jax.vmap(binary_operator), (Lambda_elements, Bu_elements))
    ys = jax.vmap(lambda x: 2 * (C_tilde @ x).real)(xs)
    Du = jax.vmap(lambda u: params["D"] * u)(u_seq)
    return ys + Du


def layer_fn():
    """jit(vmap(layer)): (params, u real (B, L, H)) -> y real (B, L, H)."""
    jax, _ = _jax()
    return jax.jit(jax.vmap(_apply_layer, in_axes=(None, 0)))


def layer_grad_fn():
    """jit(value_and_grad) of sum(y · g) w.r.t. (params, u): the layer's forward+backward."""
    jax, jnp = _jax()

    def loss(params, u, g):
        return jnp.sum(jax.vmap(_apply_layer, in_axes=(None, 0))(params, u) * g)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
