"""Load parameters of the official JAX/Flax S5 implementation (lindermanlab/S5).

The official S5SSM (conj_sym on) stores, with P the number of states kept:

    Lambda_re (P,)   Lambda_im (P,)   B (P, H, 2)   D (H,)   log_step (P, 1)
    C (H, P, 2)                         unidirectional
    C1, C2 (H, P, 2)                    bidirectional, C_init lecun_normal / trunc_standard_normal
    C (H, 2P, 2)                        bidirectional, C_init complex_normal

(the trailing 2 holds real and imaginary parts). Our S5SSM keeps the same names and
layouts, so conversion is a checked copy. Export the arrays from a Flax checkpoint with
e.g. `jax.tree_util.tree_map(np.asarray, params["params"]["layers_0"]["seq"])`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .ssm import S5SSM

def _array(params: Mapping, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in params:
        raise KeyError(f"params: missing key {key!r} (have {sorted(params)})")
    value = np.asarray(params[key])
    if value.dtype.kind not in "fiu":
        raise TypeError(f"params[{key!r}]: expected a real numeric array, got dtype {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"params[{key!r}]: expected shape {list(shape)}, got {list(value.shape)}")
    if not np.isfinite(value).all():
        raise ValueError(f"params[{key!r}] contains NaN or Inf values")
    return value


def from_official(
    params: Mapping[str, np.ndarray],
    *,
    conj_sym: bool = True,
    bidirectional: bool = False,
    discretization: str = "zoh",
    clip_eigs: bool = False,
    step_rescale: float = 1.0,
    scan_backend: str = "auto",
    blocks: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> S5SSM:
    """Build an S5SSM from the official layer's parameter dict.

    Args:
        params: numpy arrays keyed as the official flax S5SSM names them (module docstring).
        conj_sym, bidirectional, discretization, clip_eigs, step_rescale: the official
            layer's options; they must be those the parameters were trained with.
        scan_backend: our scan backend.
        blocks: recorded on the layer for information only (it shapes the initial A, which
            the loaded parameters replace); default: P, the cheapest valid value.
        dtype: float32 or float64 parameters.

    Returns:
        An S5SSM whose forward equals the official layer's output for the same input
        (up to float round-off).
    """
    unknown = set(params) - {"Lambda_re", "Lambda_im", "B", "C", "C1", "C2", "D", "log_step"}
    if unknown:
        raise KeyError(f"params: unexpected keys {sorted(unknown)}")
    if "Lambda_re" not in params or "B" not in params:
        raise KeyError(f"params: missing key 'Lambda_re' or 'B' (have {sorted(params)})")
    P = int(np.shape(params["Lambda_re"])[0])
    B_shape = np.shape(params["B"])
    if len(B_shape) != 3 or B_shape[0] != P or B_shape[2] != 2:
        raise ValueError(f"params['B']: expected shape [P={P}, H, 2], got {list(B_shape)}")
    H = int(B_shape[1])

    arrays = {
        "Lambda_re": _array(params, "Lambda_re", (P,)),
        "Lambda_im": _array(params, "Lambda_im", (P,)),
        "B": _array(params, "B", (P, H, 2)),
        "D": _array(params, "D", (H,)),
    }
    log_step = np.asarray(params.get("log_step"))
    arrays["log_step"] = _array(params, "log_step", (P, 1) if log_step.ndim == 2 else (P,)).reshape(P)
    if not bidirectional and ("C1" in params or "C2" in params):
        raise ValueError("params: C1/C2 belong to a bidirectional layer; pass bidirectional=True")
    if bidirectional and "C1" in params:
        C_init = "lecun_normal"
        arrays["C1"] = _array(params, "C1", (H, P, 2))
        arrays["C2"] = _array(params, "C2", (H, P, 2))
    elif bidirectional:
        C_init = "complex_normal"
        arrays["C"] = _array(params, "C", (H, 2 * P, 2))
    else:
        C_init = "lecun_normal"
        arrays["C"] = _array(params, "C", (H, P, 2))

    layer = S5SSM(
        H,
        2 * P if conj_sym else P,
        blocks if blocks is not None else P,
        conj_sym=conj_sym,
        clip_eigs=clip_eigs,
        bidirectional=bidirectional,
        discretization=discretization,
        C_init=C_init,
        step_rescale=step_rescale,
        scan_backend=scan_backend,
    ).to(dtype)
    state = {name: torch.as_tensor(value, dtype=dtype) for name, value in arrays.items()}
    layer.load_state_dict(state, strict=True)
    return layer


def _dense(tree: Mapping, where: str) -> dict[str, np.ndarray]:
    """A flax Dense {kernel (in, out), bias (out,)} as torch Linear {weight (out, in), bias}."""
    if "kernel" not in tree or "bias" not in tree:
        raise KeyError(f"{where}: expected a Dense layer with 'kernel' and 'bias', got {sorted(tree)}")
    return {"weight": np.asarray(tree["kernel"]).T, "bias": np.asarray(tree["bias"])}


def from_official_model(
    variables: Mapping,
    *,
    activation: str = "half_glu1",
    prenorm: bool = True,
    pooling: str = "mean",
    conj_sym: bool = True,
    bidirectional: bool = False,
    discretization: str = "zoh",
    clip_eigs: bool = False,
    step_rescale: float = 1.0,
    scan_backend: str = "auto",
    dtype: torch.dtype = torch.float32,
):
    """Build an S5Model from the variables of an official StackedEncoderModel or ClassificationModel.

    Args:
        variables: nested dicts of numpy arrays as flax stores them:
            {"params": {"encoder": {"encoder": Dense, "layers_0": {"seq": S5SSM params,
            "norm": {"scale", "bias"}, "out1"?: Dense, "out2"?: Dense}, ...},
            "decoder"?: Dense}, "batch_stats"?: {"encoder": {"layers_0": {"norm":
            {"mean", "var"}}}}} for a ClassificationModel; a StackedEncoderModel is the
            inner {"encoder": Dense, "layers_i": ...} dict. Export one from a checkpoint
            with jax.tree_util.tree_map(np.asarray, {"params": ..., "batch_stats": ...}).
        activation, prenorm: the SequenceLayer options the model was trained with.
        pooling: "mean" for the official mode "pool", "last" for mode "last".
        conj_sym, bidirectional, discretization, clip_eigs, step_rescale: the SSM options.

    Returns:
        An S5Model in eval mode whose forward equals the official model's (the head
        returns logits; the official classifier's log_softmax of them is monotone).
    """
    from .model import S5Model

    params = variables.get("params", variables)
    stats = variables.get("batch_stats", {})
    stack, head = params, None
    if "decoder" in params:  # ClassificationModel: StackedEncoderModel under "encoder"
        stack, head = params["encoder"], params["decoder"]
        stats = stats.get("encoder", {})
    layer_names = sorted((k for k in stack if k.startswith("layers_")), key=lambda k: int(k.split("_")[1]))
    if "encoder" not in stack or not layer_names:
        raise KeyError(f"params: expected 'encoder' and 'layers_0'... in the encoder stack, got {sorted(stack)}")
    if [int(k.split("_")[1]) for k in layer_names] != list(range(len(layer_names))):
        raise KeyError(f"params: layer names must be layers_0..layers_N, got {layer_names}")

    ssm_options = dict(conj_sym=conj_sym, bidirectional=bidirectional, discretization=discretization,
                       clip_eigs=clip_eigs, step_rescale=step_rescale, scan_backend=scan_backend)  # fmt: skip
    layers = [from_official(stack[name]["seq"], dtype=torch.float64, **ssm_options) for name in layer_names]
    encoder = _dense(stack["encoder"], "params['encoder']")
    norm = "batch" if any(name in stats for name in layer_names) else "layer"
    model = S5Model(
        embed_dim=encoder["weight"].shape[1],
        hidden_size=encoder["weight"].shape[0],
        state_size=layers[0].state_size,
        num_layers=len(layers),
        output_dim=None if head is None else np.shape(head["bias"])[0],
        pooling=pooling,
        blocks=layers[0].num_states,  # only shapes the initial A, which is replaced
        norm=norm,
        prenorm=prenorm,
        activation=activation,
        **ssm_options,
    ).to(dtype)
    state = {f"encoder.{k}": v for k, v in encoder.items()}
    if head is not None:
        state.update({f"head.{k}": v for k, v in _dense(head, "params['decoder']").items()})
    for i, (name, ssm) in enumerate(zip(layer_names, layers)):
        tree = stack[name]
        state.update({f"layers.{i}.ssm.{k}": v for k, v in ssm.state_dict().items()})
        state[f"layers.{i}.norm.weight"] = np.asarray(tree["norm"]["scale"])
        state[f"layers.{i}.norm.bias"] = np.asarray(tree["norm"]["bias"])
        if norm == "batch":
            state[f"layers.{i}.norm.running_mean"] = np.asarray(stats[name]["norm"]["mean"])
            state[f"layers.{i}.norm.running_var"] = np.asarray(stats[name]["norm"]["var"])
            state[f"layers.{i}.norm.num_batches_tracked"] = torch.tensor(0)
        for dense in ("out1", "out2"):
            if dense in tree:
                for k, v in _dense(tree[dense], f"params[{name!r}][{dense!r}]").items():
                    state[f"layers.{i}.{dense}.{k}"] = v
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    return model.eval()
