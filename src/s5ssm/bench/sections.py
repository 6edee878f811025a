"""The timed sections of `s5ssm bench`: scan, layer, irregular, step.

Each returns a JSON-ready dict of medians (ms) and ratios against a baseline run
interleaved with it in the same process (see timing.timed). Memory is in peak.py. scan,
layer and irregular run on the device given (CUDA: each timed call synchronised, the
triton backend in the rows of the compiled CPU one); step is CPU-only.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model import S5Model, recommended_defaults
from ..scan import linear_scan, resolve_backend
from ..ssm import S5SSM
from . import paper_jax
from .timing import ms, timed, try_jax



def scan_rows(device: torch.device) -> dict[str, tuple[str, bool]]:
    """The rows of the scan table on `device`: name -> (backend, reverse). The reverse row
    is the backwards half of a bidirectional layer (on the CPU its forward walks memory
    backwards, scan/cpu.py)."""
    fast = "triton" if device.type == "cuda" else "cpu"
    return {fast: (fast, False), f"{fast}_reverse": (fast, True), "parallel": ("parallel", False),
            "reference": ("reference", False)}  # fmt: skip


# ---------------------------------------------------------------------------- scan
def scan_inputs(batch: int, length: int, size: int, seed: int = 0, device: torch.device | str = "cpu"):
    """A stable time-invariant Λ̄ complex64 (P,) and B̄u complex64 (B, L, P) on `device`."""
    g = torch.Generator().manual_seed(seed)
    radius = 0.9 + 0.0999 * torch.rand(size, generator=g)
    lam = torch.polar(radius, math.pi * torch.rand(size, generator=g)).to(torch.complex64)
    bu = torch.randn(batch, length, size, dtype=torch.complex64, generator=g)
    return lam.to(device), bu.to(device)


def bench_scan(size: dict, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """Each backend's forward and forward+backward (the fast one also in reverse) vs the
    memory floor, and vs JAX (on the CPU)."""
    B, L, P = size["batch"], size["length"], size["state"]
    rows = scan_rows(device)
    lam, bu = scan_inputs(B, L, P, device=device)
    grad = torch.randn_like(bu)
    dst, dst2 = torch.empty_like(bu), torch.empty_like(bu)
    lam_g, bu_g = lam.clone().requires_grad_(), bu.clone().requires_grad_()
    ref_length = min(L, size["reference_length"])  # the Python loop's backward is slow: a prefix

    def fwd(backend: str, reverse: bool = False, length: int = L):
        with torch.no_grad():
            return linear_scan(lam, bu[:, :length], reverse=reverse, backend=backend)

    def fwd_bwd(backend: str, reverse: bool = False, length: int = L):
        out = linear_scan(lam_g, bu_g[:, :length], reverse=reverse, backend=backend)
        return torch.autograd.grad(out, (lam_g, bu_g), grad[:, :length])

    # memory floors: the forward reads B̄u and writes the states (one copy of the bytes);
    # the backward reads the output gradient and the states and writes d B̄u (one add).
    copy = lambda: dst.copy_(bu)  # noqa: E731
    floor_fb = lambda: (dst.copy_(bu), torch.add(grad, dst, out=dst2))  # noqa: E731

    t_fwd = timed({"copy": copy, **{row: (lambda a=args: fwd(*a)) for row, args in rows.items()}}, repeats,
                  device=device)  # fmt: skip
    fast_rows = {row: (lambda a=args: fwd_bwd(*a)) for row, args in rows.items() if row != "reference"}
    t_fb = timed({"floor": floor_fb, **fast_rows}, repeats, device=device)
    t_ref = timed({"reference": lambda: fwd_bwd("reference", False, ref_length)}, max(1, min(repeats, 3)),
                  device=device)  # fmt: skip

    results: dict = {
        "device": str(device),
        "rows": list(rows),
        "shape": {"B": B, "L": L, "P": P},
        "dtype": "complex64",
        "lambda_bar": "time-invariant (P,)",
        "copy_ms": ms(t_fwd["copy"]),
        "copy_GBps": 2 * bu.numel() * bu.element_size() / t_fwd["copy"]["median"] / 1e9,
        "floor_forward_backward_ms": ms(t_fb["floor"]),
    }
    for b in rows:
        row = {
            "forward_ms": ms(t_fwd[b]),
            "copy_throughput_ratio": t_fwd["copy"]["median"] / t_fwd[b]["median"],
            "forward_spread_ms": [t_fwd[b]["min"] * 1e3, t_fwd[b]["max"] * 1e3],
        }
        if b == "reference":
            scale = L / ref_length
            row["forward_backward_ms"] = ms(t_ref["reference"]) * scale
            row["floor_throughput_ratio_forward_backward"] = (
                t_fb["floor"]["median"] / (t_ref["reference"]["median"] * scale)
            )
            row["note"] = (f"forward+backward timed at L={ref_length} and scaled x{scale:g} "
                           f"(the Python loop costs the same per step)") if scale != 1 else ""  # fmt: skip
        else:
            row["forward_backward_ms"] = ms(t_fb[b])
            row["floor_throughput_ratio_forward_backward"] = t_fb["floor"]["median"] / t_fb[b]["median"]
        results[b] = row

    jx = try_jax() if device.type == "cpu" else None
    if jx is None:
        results["jax"] = None
        return results
    jax, jnp = jx
    scan_j, grad_j = paper_jax.scan_fn(), paper_jax.scan_grad_fn()
    lam_j, bu_j, g_j = (jnp.asarray(t.numpy()) for t in (lam, bu, grad))
    ours = fwd("cpu")
    theirs = torch.from_numpy(jax.device_get(scan_j(lam_j, bu_j)).copy())
    t_fwd_j = timed(
        {"jax": lambda: scan_j(lam_j, bu_j).block_until_ready(), "cpu": lambda: fwd("cpu")}, repeats, lead_in=True
    )
    t_fb_j = timed({"jax": lambda: jax.block_until_ready(grad_j(lam_j, bu_j, g_j)),
                    "cpu": lambda: fwd_bwd("cpu")}, repeats, lead_in=True)  # fmt: skip
    results["jax"] = {
        "what": "jit(vmap(jax.lax.associative_scan)) with Λ̄ tiled to (L, P), as in the paper's apply_ssm",
        "forward_ms": ms(t_fwd_j["jax"]),
        "forward_backward_ms": ms(t_fb_j["jax"]),
        "cpu_forward_speedup": t_fwd_j["jax"]["median"] / t_fwd_j["cpu"]["median"],
        "cpu_forward_backward_speedup": t_fb_j["jax"]["median"] / t_fb_j["cpu"]["median"],
        "copy_over_jax_forward": t_fwd["copy"]["median"] / t_fwd_j["jax"]["median"],
        "max_rel_diff": float((ours - theirs).abs().max() / ours.abs().max()),
    }
    return results


# ---------------------------------------------------------------------------- layer
def make_layer(size: dict, backend: str = "auto", seed: int = 0, device: torch.device | str = "cpu"):
    """The benchmarked S5SSM (conj_sym, zoh, float32) and an input u (B, L, H), on `device`."""
    g = torch.Generator().manual_seed(seed)
    layer = S5SSM(size["hidden"], size["layer_state"], conj_sym=True, scan_backend=backend, generator=g)
    u = torch.randn(size["batch"], size["length"], size["hidden"], generator=g)
    return layer.to(device), u.to(device)


def layer_fwd_bwd(layer: S5SSM, u_g: torch.Tensor, grad: torch.Tensor, **kwargs):
    """One forward+backward: the gradients of u and of every parameter (nothing accumulates)."""
    params = [p for p in layer.parameters() if p.requires_grad]
    return torch.autograd.grad(layer(u_g, **kwargs), [u_g, *params], grad)


def bench_layer(size: dict, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """The layer vs its own GEMMs alone; vs the paper's JAX layer (CPU) or vs the same layer
    on the parallel backend (CUDA)."""
    layer, u = make_layer(size, device=device)
    H, P = layer.hidden_size, layer.num_states
    B, L = u.shape[:2]
    g = torch.Generator().manual_seed(1)
    w_in = (torch.randn(2 * P, H, generator=g) / math.sqrt(H)).to(device)
    w_out = (torch.randn(H, 2 * P, generator=g) / math.sqrt(2 * P)).to(device)
    x = torch.randn(B, L, 2 * P, generator=g).to(device)  # the states as interleaved (re, im) floats
    grad = torch.randn(B, L, H, generator=g).to(device)
    grad_in = torch.randn(B, L, 2 * P, generator=g).to(device)
    u_g, w_in_g, w_out_g, x_g = (t.clone().requires_grad_() for t in (u, w_in, w_out, x))

    def gemms_fwd():
        with torch.no_grad():
            return F.linear(u, w_in), F.linear(x, w_out)

    def layer_fwd():
        with torch.no_grad():
            return layer(u)

    def gemms_fb():  # 2 forward GEMMs, 4 backward GEMMs (input and weight gradients)
        outs = [F.linear(u_g, w_in_g), F.linear(x_g, w_out_g)]
        return torch.autograd.grad(outs, [u_g, w_in_g, x_g, w_out_g], [grad_in, grad])

    t_fwd = timed({"gemms": gemms_fwd, "layer": layer_fwd}, repeats, device=device)
    t_fb = timed({"gemms": gemms_fb, "layer": lambda: layer_fwd_bwd(layer, u_g, grad)}, repeats, device=device)
    flops = 2 * B * L * H * 2 * P * 2  # two GEMMs of B·L × H × 2P
    results: dict = {
        "device": str(device),
        "shape": {"B": B, "L": L, "H": H, "state_size": layer.state_size, "P_kept": P, "dtype": "float32"},
        "scan_backend": f"auto -> {resolve_backend('auto', device)}",
        "forward_ms": ms(t_fwd["layer"]),
        "gemms_forward_ms": ms(t_fwd["gemms"]),
        "gemms_forward_GFLOPs": flops / t_fwd["gemms"]["median"] / 1e9,
        "forward_over_gemms": t_fwd["layer"]["median"] / t_fwd["gemms"]["median"],
        "forward_backward_ms": ms(t_fb["layer"]),
        "gemms_forward_backward_ms": ms(t_fb["gemms"]),
        "forward_backward_over_gemms": t_fb["layer"]["median"] / t_fb["gemms"]["median"],
    }
    if device.type == "cuda":
        results["parallel"] = _bench_parallel_layer(layer, u_g, grad, repeats, device)
    jx = try_jax() if device.type == "cpu" else None
    results["jax"] = None if jx is None else _bench_jax_layer(layer, u, u_g, grad, repeats, jx)
    return results


def _bench_parallel_layer(layer: S5SSM, u_g, grad, repeats: int, device: torch.device) -> dict:
    """The layer's forward+backward on its default backend vs a copy on the parallel one."""
    twin = copy.deepcopy(layer)
    twin.scan_backend = "parallel"
    t_fb = timed({"parallel": lambda: layer_fwd_bwd(twin, u_g, grad), "ours": lambda: layer_fwd_bwd(layer, u_g, grad)},
                 repeats, device=device)  # fmt: skip
    return {
        "forward_backward_ms": ms(t_fb["parallel"]),
        "forward_backward_speedup": t_fb["parallel"]["median"] / t_fb["ours"]["median"],
    }


def _bench_jax_layer(layer: S5SSM, u, u_g, grad, repeats: int, jx) -> dict:
    jax, jnp = jx
    params = jax.tree_util.tree_map(jnp.asarray, paper_jax.layer_params(layer))
    forward, fwd_bwd = paper_jax.layer_fn(), paper_jax.layer_grad_fn()
    u_j, g_j = jnp.asarray(u.numpy()), jnp.asarray(grad.numpy())
    with torch.no_grad():
        ours = layer(u)
    theirs = torch.from_numpy(jax.device_get(forward(params, u_j)).copy())

    def ours_fwd():
        with torch.no_grad():
            return layer(u)

    t_fwd = timed({"jax": lambda: forward(params, u_j).block_until_ready(), "ours": ours_fwd}, repeats, lead_in=True)
    t_fb = timed({"jax": lambda: jax.block_until_ready(fwd_bwd(params, u_j, g_j)),
                  "ours": lambda: layer_fwd_bwd(layer, u_g, grad)}, repeats, lead_in=True)  # fmt: skip
    return {
        "what": "the paper's S5SSM (discretize_zoh + apply_ssm + D u), jit(vmap) over the batch; "
        "forward+backward = jit(value_and_grad) w.r.t. parameters and input",
        "forward_ms": ms(t_fwd["jax"]),
        "forward_backward_ms": ms(t_fb["jax"]),
        "forward_speedup": t_fwd["jax"]["median"] / t_fwd["ours"]["median"],
        "forward_backward_speedup": t_fb["jax"]["median"] / t_fb["ours"]["median"],
        "max_rel_diff": float((ours - theirs).abs().max() / ours.abs().max()),
    }


# ---------------------------------------------------------------------------- irregular
def bench_irregular(size: dict, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """step_scale [B, L] (irregular sampling) vs a scalar step_scale, same layer and input."""
    layer, u = make_layer(size, device=device)
    g = torch.Generator().manual_seed(2)
    scale = (0.5 + torch.rand(u.shape[0], u.shape[1], generator=g)).to(device)
    grad = torch.randn(u.shape, generator=g).to(device)
    u_g = u.clone().requires_grad_()

    def fwd(step_scale):
        with torch.no_grad():
            return layer(u, step_scale=step_scale)

    t_fwd = timed({"scalar": lambda: fwd(1.0), "irregular": lambda: fwd(scale)}, repeats, device=device)
    t_fb = timed({"scalar": lambda: layer_fwd_bwd(layer, u_g, grad, step_scale=1.0),
                  "irregular": lambda: layer_fwd_bwd(layer, u_g, grad, step_scale=scale)}, repeats,
                 device=device)  # fmt: skip
    return {
        "device": str(device),
        "shape": {"B": u.shape[0], "L": u.shape[1], "H": layer.hidden_size, "state_size": layer.state_size},
        "scalar_forward_ms": ms(t_fwd["scalar"]),
        "irregular_forward_ms": ms(t_fwd["irregular"]),
        "forward_ratio": t_fwd["irregular"]["median"] / t_fwd["scalar"]["median"],
        "scalar_forward_backward_ms": ms(t_fb["scalar"]),
        "irregular_forward_backward_ms": ms(t_fb["irregular"]),
        "forward_backward_ratio": t_fb["irregular"]["median"] / t_fb["scalar"]["median"],
    }


# ---------------------------------------------------------------------------- step
def bench_step(frames: int, budget_s: float, embed_dim: int = 32, window: int = 60) -> dict:
    """Per-frame latency of model.step at batch 1 vs recomputing a window with forward.

    model.step runs compiled (s5ssm.streaming); the same step in torch ops (the reference
    path, a copy of the model with scan_backend="reference") is timed beside it, and, when
    onnx and onnxruntime are installed, the step exported by s5ssm.export run in an
    onnxruntime session (numpy in and out, the states carried as a deployed loop does).
    They run in turn in blocks of 20 frames, each call timed on its own; the medians over
    frames are reported. Run at the default thread count and again with one thread.
    """
    torch.manual_seed(0)
    model = S5Model(embed_dim=embed_dim, **recommended_defaults()).eval()
    torch_ops = copy.deepcopy(model)
    for layer in torch_ops.layers:
        layer.ssm.scan_backend = "reference"
    stream = torch.randn(1, window, embed_dim)
    results: dict = {
        "config": f"S5Model(embed_dim={embed_dim}, **recommended_defaults()), eval, torch.inference_mode, batch 1",
        "window": window,
    }
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        exported = _export_step(model, Path(tmp) / "step.onnx")
        if not isinstance(exported, Path):
            results["onnx_note"] = exported
        for label, threads in (("default_threads", default_threads), ("one_thread", 1)):
            session = _onnx_session(exported, threads) if isinstance(exported, Path) else None
            with _threads(threads), torch.inference_mode():
                results[label] = _step_vs_window(model, torch_ops, stream, frames, budget_s / 2, session)
            results[label]["threads"] = threads
    return results


def _export_step(model: S5Model, path: Path) -> Path | str:
    """The model's step exported to `path` as ONNX, or why not (onnx or onnxruntime missing)."""
    try:
        import onnxruntime  # noqa: F401

        from ..export import export

        return export(model, format="onnx", what="step", out=path)
    except ImportError as exc:
        return f"onnxruntime step not timed: {exc.name or exc} is not installed (pip install 's5ssm[deploy]')"


def _onnx_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _OnnxStep:
    """The exported step in an onnxruntime session, carrying its states from frame to frame."""

    def __init__(self, session) -> None:
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        self.feeds = {i.name: np.zeros([1] + i.shape[1:], dtype=np.float32) for i in session.get_inputs()[1:]}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = dict(zip(self.outputs, self.session.run(None, {"x": x, **self.feeds})))
        y = out.pop("y")
        self.feeds = {name.replace("_out", "_in"): value for name, value in out.items()}
        return y


def _step_vs_window(model, torch_ops, stream, frames: int, budget_s: float, session=None, block: int = 20) -> dict:
    import statistics

    window = stream.shape[1]
    cache, ops_cache = model.init_cache(1), torch_ops.init_cache(1)
    onnx_step, frames_np = (_OnnxStep(session) if session is not None else None), stream.numpy()
    for t in range(5):  # warm-up: kernels, caches of the step operator
        _, cache = model.step(stream[:, t], cache)
        _, ops_cache = torch_ops.step(stream[:, t], ops_cache)
        model(stream)
        if onnx_step is not None:
            onnx_step(frames_np[:, t])
    times: dict[str, list[float]] = {"step": [], "torch_ops": [], "window": [], "onnx": []}
    deadline = time.perf_counter() + budget_s
    t = 0
    while t < frames and (time.perf_counter() < deadline or t < 2 * block):
        # blocks of frames for each path in turn: each runs in its own steady state (caches,
        # threads) as in a loop that does one thing per frame, and all see the same machine
        for _ in range(block):
            start = time.perf_counter()
            _, cache = model.step(stream[:, t % window], cache)
            times["step"].append(time.perf_counter() - start)
        for _ in range(block):
            start = time.perf_counter()
            model(stream)  # the last `window` frames, recomputed from scratch
            times["window"].append(time.perf_counter() - start)
        for _ in range(block):
            start = time.perf_counter()
            _, ops_cache = torch_ops.step(stream[:, t % window], ops_cache)
            times["torch_ops"].append(time.perf_counter() - start)
        for _ in range(block if onnx_step is not None else 0):
            start = time.perf_counter()
            onnx_step(frames_np[:, t % window])
            times["onnx"].append(time.perf_counter() - start)
        t += block
    steps = sorted(times["step"])
    step_ms, window_ms, ops_ms = (statistics.median(times[k]) * 1e3 for k in ("step", "window", "torch_ops"))
    onnx = {}
    if times["onnx"]:
        onnx_ms = statistics.median(times["onnx"]) * 1e3
        onnx = {"onnx_step_ms_per_frame": onnx_ms, "onnx_over_compiled_step": onnx_ms / step_ms}
    return {
        **onnx,
        "frames": len(steps),
        "step_ms_per_frame": step_ms,
        "step_p90_ms": steps[int(0.9 * (len(steps) - 1))] * 1e3,
        "window_recompute_ms_per_frame": window_ms,
        "speedup_vs_window": window_ms / step_ms,
        "torch_ops_step_ms_per_frame": ops_ms,
        "speedup_vs_torch_ops": ops_ms / step_ms,
    }


class _threads:
    """Temporarily set torch's (and numba's) thread count."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __enter__(self):
        self.torch_before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        try:
            import numba

            self.numba_before = numba.get_num_threads()
            numba.set_num_threads(min(self.n, numba.config.NUMBA_NUM_THREADS))
        except ImportError:
            self.numba_before = None

    def __exit__(self, *exc):
        torch.set_num_threads(self.torch_before)
        if self.numba_before is not None:
            import numba

            numba.set_num_threads(self.numba_before)
