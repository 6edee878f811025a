"""`s5ssm bench`: speed and memory of the scan, the layer and streaming, as ratios.

Every figure is the median of repeated runs and is shown as a ratio against a baseline
measured in the same process, interleaved with it (these machines are shared and noisy):

    scan       each backend's forward and forward+backward vs dst.copy_(src) over the
               states' bytes (the memory limit); and vs JAX's associative_scan
    layer      S5SSM forward and forward+backward vs its own GEMMs alone (the compute
               limit); and vs the layer written in JAX as the paper's code does it
    irregular  step_scale [B, L] vs a scalar step_scale (time; memory in `memory`)
    step       model.step per frame at batch 1 vs recomputing a 60-frame window
    memory     peak RSS of layer forward+backward per sequence length and backend, each
               in a fresh subprocess, minus a subprocess that only builds the inputs

Run as `s5ssm bench [--quick] [--sections ...] [--json PATH]` or `python -m s5ssm.bench`.
The process keeps freed memory (s5ssm.memory.keep_freed_memory) as the CLI does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .memory import keep_freed_memory
from .model import S5Model, recommended_defaults
from .scan import linear_scan
from .ssm import S5SSM

SECTIONS = ("scan", "layer", "irregular", "step", "memory")
FULL = dict(batch=8, length=4096, state=128, hidden=128, layer_state=128, memory_lengths=[4096, 16384, 65536])
QUICK = dict(batch=2, length=256, state=16, hidden=16, layer_state=16, memory_lengths=[512])


def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions run interleaved round by round."""
    for fn in fns.values():
        fn()  # warm up (compilation, allocator)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _jax():
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    return jax, jnp


# ---------------------------------------------------------------------------- scan
def bench_scan(size: dict, repeats: int) -> dict:
    B, L, P = size["batch"], size["length"], size["state"]
    g = torch.Generator().manual_seed(0)
    lam = (0.99 * torch.exp(1j * torch.rand(P, generator=g))).to(torch.complex64)
    bu = torch.randn(B, L, P, dtype=torch.complex64, generator=g)
    dst = torch.empty_like(bu)
    ref_length = min(L, 256)  # the reference loop runs per step in Python: time a prefix
    results: dict = {"shape": [B, L, P], "dtype": "complex64"}

    with torch.no_grad():
        fns = {"copy": lambda: dst.copy_(bu)}
        for backend in ("cpu", "parallel"):
            fns[backend] = lambda b=backend: linear_scan(lam, bu, backend=b)
        fns["reference"] = lambda: linear_scan(lam, bu[:, :ref_length], backend="reference")
        fwd = timed(fns, repeats)
    fwd["reference"] *= L / ref_length
    lam_g, bu_g = lam.clone().requires_grad_(), bu.clone().requires_grad_()
    grad = torch.randn_like(bu)

    def fwd_bwd(backend: str, length: int = L):
        out = linear_scan(lam_g, bu_g[:, :length], backend=backend)
        torch.autograd.backward(out, grad[:, :length])

    both = timed({b: (lambda b=b: fwd_bwd(b)) for b in ("cpu", "parallel")} | {
        "reference": lambda: fwd_bwd("reference", ref_length)}, max(1, repeats // 2))  # fmt: skip
    both["reference"] *= L / ref_length
    results["copy_ms"] = fwd["copy"] * 1e3
    for backend in ("cpu", "parallel", "reference"):
        results[backend] = {
            "forward_ms": fwd[backend] * 1e3,
            "forward_backward_ms": both[backend] * 1e3,
            "copy_throughput_ratio": fwd["copy"] / fwd[backend],
        }
    results["reference"]["note"] = f"timed on L={ref_length}, scaled to L={L}"

    if (jx := _jax()) is not None:
        jax, jnp = jx
        lam_j = jnp.asarray(lam.numpy())
        bu_j = jnp.asarray(bu.numpy())

        @jax.jit
        def jax_scan(lam_j, bu_j):
            def one(bu_seq):  # the paper's apply_ssm: Λ̄ tiled to (L, P)
                elements = lam_j * jnp.ones((bu_seq.shape[0], lam_j.shape[0]), dtype=lam_j.dtype)
                return jax.lax.associative_scan(_binary_operator, (elements, bu_seq))[1]

            return jax.vmap(one)(bu_j)

        run = lambda: jax_scan(lam_j, bu_j).block_until_ready()  # noqa: E731
        with torch.no_grad():
            t = timed({"jax": run, "cpu": lambda: linear_scan(lam, bu, backend="cpu")}, repeats)
        results["jax"] = {"forward_ms": t["jax"] * 1e3, "cpu_speedup": t["jax"] / t["cpu"]}
    return results


def _binary_operator(q_i, q_j):
    """The paper's operator: (a_i, b_i) • (a_j, b_j) = (a_j a_i, a_j b_i + b_j)."""
    a_i, b_i = q_i
    a_j, b_j = q_j
    return a_j * a_i, a_j * b_i + b_j


# ---------------------------------------------------------------------------- layer
def _layer_and_input(size: dict, backend: str = "auto"):
    torch.manual_seed(0)
    layer = S5SSM(size["hidden"], size["layer_state"], conj_sym=True, scan_backend=backend)
    u = torch.randn(size["batch"], size["length"], size["hidden"])
    return layer, u


def bench_layer(size: dict, repeats: int) -> dict:
    layer, u = _layer_and_input(size)
    H, P = layer.hidden_size, layer.num_states
    w_in, w_out = torch.randn(2 * P, H), torch.randn(H, 2 * P)
    x = torch.randn(u.shape[0], u.shape[1], 2 * P)
    with torch.no_grad():
        fwd = timed({"gemms": lambda: (F.linear(u, w_in), F.linear(x, w_out)), "layer": lambda: layer(u)}, repeats)
    u_g, w_in_g, w_out_g, x_g = (t.clone().requires_grad_() for t in (u, w_in, w_out, x))
    grad = torch.randn_like(u)

    def gemms_fb():
        torch.autograd.backward([F.linear(u_g, w_in_g), F.linear(x_g, w_out_g)], [torch.ones_like(x), grad])

    def layer_fb():
        layer(u_g).backward(grad)

    both = timed({"gemms": gemms_fb, "layer": layer_fb}, repeats)
    results = {
        "shape": {"B": u.shape[0], "L": u.shape[1], "H": H, "state_size": layer.state_size, "P_kept": P},
        "forward_ms": fwd["layer"] * 1e3,
        "gemms_forward_ms": fwd["gemms"] * 1e3,
        "forward_over_gemms": fwd["layer"] / fwd["gemms"],
        "forward_backward_ms": both["layer"] * 1e3,
        "gemms_forward_backward_ms": both["gemms"] * 1e3,
        "forward_backward_over_gemms": both["layer"] / both["gemms"],
    }
    if (jx := _jax()) is not None:
        results["jax"] = _bench_jax_layer(layer, u, grad, repeats, jx)
    return results


def _bench_jax_layer(layer: S5SSM, u: torch.Tensor, grad: torch.Tensor, repeats: int, jx) -> dict:
    """The same layer in JAX as the paper's code writes it; ours / JAX time ratios."""
    jax, jnp = jx
    with torch.no_grad():
        lam_bar, gamma = layer.discretized()
        b_tilde = torch.view_as_complex(layer.B.contiguous())
        c_tilde = torch.view_as_complex(layer.C.contiguous())
        params = {
            "lam": jnp.asarray(lam_bar.numpy()),
            "b_bar": jnp.asarray((gamma[:, None] * b_tilde).numpy()),
            "c": jnp.asarray(c_tilde.numpy()),
            "d": jnp.asarray(layer.D.numpy()),
        }
    u_j, g_j = jnp.asarray(u.numpy()), jnp.asarray(grad.numpy())

    def apply_ssm(params, seq):  # lindermanlab/S5 s5/ssm.py apply_ssm, conj_sym, + D u
        elements = params["lam"] * jnp.ones((seq.shape[0], params["lam"].shape[0]), dtype=params["lam"].dtype)
        bu = jax.vmap(lambda v: params["b_bar"] @ v)(seq)
        _, xs = jax.lax.associative_scan(_binary_operator, (elements, bu))
        return jax.vmap(lambda x: 2 * (params["c"] @ x).real)(xs) + params["d"] * seq

    forward = jax.jit(lambda p, x: jax.vmap(lambda s: apply_ssm(p, s))(x))
    loss = lambda p, x: jnp.sum(forward(p, x) * g_j)  # noqa: E731
    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    u_g = u.clone().requires_grad_()
    with torch.no_grad():
        t_fwd = timed({"jax": lambda: forward(params, u_j).block_until_ready(), "ours": lambda: layer(u)}, repeats)
    t_both = timed({
        "jax": lambda: jax.block_until_ready(fwd_bwd(params, u_j)),
        "ours": lambda: layer(u_g).backward(grad),
    }, max(1, repeats // 2))  # fmt: skip
    return {
        "forward_ms": t_fwd["jax"] * 1e3,
        "forward_speedup": t_fwd["jax"] / t_fwd["ours"],
        "forward_backward_ms": t_both["jax"] * 1e3,
        "forward_backward_speedup": t_both["jax"] / t_both["ours"],
    }


# ---------------------------------------------------------------------------- irregular
def bench_irregular(size: dict, repeats: int) -> dict:
    layer, u = _layer_and_input(size)
    scale = torch.rand(u.shape[0], u.shape[1]) + 0.5
    grad = torch.randn_like(u)
    u_g = u.clone().requires_grad_()
    with torch.no_grad():
        fwd = timed({"scalar": lambda: layer(u, step_scale=1.0), "irregular": lambda: layer(u, step_scale=scale)}, repeats)
    both = timed({
        "scalar": lambda: layer(u_g, step_scale=1.0).backward(grad),
        "irregular": lambda: layer(u_g, step_scale=scale).backward(grad),
    }, repeats)  # fmt: skip
    return {
        "forward_ratio": fwd["irregular"] / fwd["scalar"],
        "forward_backward_ratio": both["irregular"] / both["scalar"],
        "scalar_forward_backward_ms": both["scalar"] * 1e3,
        "irregular_forward_backward_ms": both["irregular"] * 1e3,
    }


# ---------------------------------------------------------------------------- step
def bench_step(quick: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    features, window = 32, 60
    model = S5Model(embed_dim=features, output_dim=4, **recommended_defaults()).eval()
    frames = torch.randn(1, window, features)
    frame_count = 20 if quick else 300
    state = {"cache": model.init_cache(1)}

    def step_frames():
        for t in range(frame_count):
            _, state["cache"] = model.step(frames[:, t % window], state["cache"])

    def recompute_frames():
        for _ in range(max(1, frame_count // 10)):
            model(frames)

    with torch.inference_mode():
        t = timed({"step": step_frames, "window": recompute_frames}, max(1, repeats // 2))
    per_step = t["step"] / frame_count
    per_window = t["window"] / max(1, frame_count // 10)
    return {
        "config": "S5Model(embed_dim=32, output_dim=4, **recommended_defaults()), batch 1",
        "step_ms_per_frame": per_step * 1e3,
        "window_recompute_ms_per_frame": per_window * 1e3,
        "speedup_vs_window": per_window / per_step,
    }


# ---------------------------------------------------------------------------- memory
_MEMORY_CHILD = """
import sys, torch
from s5ssm.bench import _layer_and_input
from s5ssm.memory import keep_freed_memory
keep_freed_memory()
def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))
mode, length, backend, hidden, state, batch = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:])
layer, u = _layer_and_input(dict(batch=batch, length=length, hidden=hidden, layer_state=state), backend)
u.requires_grad_()
scale = torch.rand(batch, length) + 0.5 if mode == "irregular" else 1.0
layer(u[:, :2], step_scale=scale if mode == "scalar" else scale[:, :2]).sum().backward()  # compile/load kernels
u.grad = None
layer.zero_grad(set_to_none=True)
before = status("VmRSS:")
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # reset the high-water mark VmHWM to the current RSS
layer(u, step_scale=scale).sum().backward()
print(status("VmHWM:") - before)
"""


def _peak_kib(mode: str, length: int, backend: str, size: dict) -> int:
    args = [mode, length, backend, size["hidden"], size["layer_state"], size["batch"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, *map(str, args)], capture_output=True, text=True,
                         check=True, env=env)  # fmt: skip
    return int(out.stdout.strip().splitlines()[-1])


def bench_memory(size: dict) -> dict:
    rows = []
    for length in size["memory_lengths"]:
        row: dict = {"L": length}
        for backend in ("cpu", "parallel"):
            if backend == "parallel" and length > 16384:
                row[f"{backend}_MiB"] = None  # grows past this machine's budget: not run
                continue
            row[f"{backend}_MiB"] = _peak_kib("scalar", length, backend, size) / 1024
        row["cpu_irregular_MiB"] = _peak_kib("irregular", length, "cpu", size) / 1024
        rows.append(row)
    return {"method": "growth of peak RSS (VmHWM, reset just before) over one forward+backward, "
                      "in a fresh process per cell", "rows": rows}  # fmt: skip


# ---------------------------------------------------------------------------- report
def _machine() -> dict:
    info = {
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        pass
    if (jx := _jax()) is not None:
        info["jax"] = jx[0].__version__
    return info


def _print_report(results: dict) -> None:
    print("machine:", ", ".join(f"{k}={v}" for k, v in results["machine"].items()))
    if "scan" in results:
        s = results["scan"]
        print(f"\nscan {s['shape']} {s['dtype']}: copy_ of the states' bytes {s['copy_ms']:.2f} ms")
        print(f"  {'backend':<10}{'fwd ms':>10}{'fwd+bwd ms':>12}{'copy/fwd':>10}")
        for b in ("cpu", "parallel", "reference"):
            r = s[b]
            print(f"  {b:<10}{r['forward_ms']:>10.2f}{r['forward_backward_ms']:>12.2f}{r['copy_throughput_ratio']:>10.2f}")
        if "jax" in s:
            print(f"  jax associative_scan fwd {s['jax']['forward_ms']:.2f} ms: cpu is {s['jax']['cpu_speedup']:.1f}x faster")
    if "layer" in results:
        r = results["layer"]
        print(f"\nlayer {r['shape']}")
        print(f"  forward          {r['forward_ms']:8.2f} ms = {r['forward_over_gemms']:.2f}x its GEMMs ({r['gemms_forward_ms']:.2f} ms)")
        print(f"  forward+backward {r['forward_backward_ms']:8.2f} ms = {r['forward_backward_over_gemms']:.2f}x its GEMMs ({r['gemms_forward_backward_ms']:.2f} ms)")
        if "jax" in r:
            j = r["jax"]
            print(f"  vs JAX (paper's way): forward {j['forward_speedup']:.1f}x faster ({j['forward_ms']:.1f} ms), "
                  f"forward+backward {j['forward_backward_speedup']:.1f}x faster ({j['forward_backward_ms']:.1f} ms)")
    if "irregular" in results:
        r = results["irregular"]
        print(f"\nirregular step_scale [B, L] / scalar: forward {r['forward_ratio']:.2f}x, forward+backward {r['forward_backward_ratio']:.2f}x")
    if "step" in results:
        r = results["step"]
        print(f"\nstep ({r['config']}): {r['step_ms_per_frame']:.3f} ms per frame, "
              f"window recompute {r['window_recompute_ms_per_frame']:.2f} ms: {r['speedup_vs_window']:.0f}x faster")
    if "memory" in results:
        print(f"\npeak memory, layer forward+backward ({results['memory']['method']}), MiB:")
        print(f"  {'L':>7}{'cpu':>10}{'parallel':>10}{'cpu irregular':>15}")
        for row in results["memory"]["rows"]:
            par = "-" if row["parallel_MiB"] is None else f"{row['parallel_MiB']:.0f}"
            print(f"  {row['L']:>7}{row['cpu_MiB']:>10.0f}{par:>10}{row['cpu_irregular_MiB']:>15.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s5ssm bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 15, quick 2)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", default="bench-results.json", help="where to write the results")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    keep_freed_memory()
    size = QUICK if args.quick else FULL
    repeats = args.repeats or (2 if args.quick else 15)
    results: dict = {"machine": _machine(), "quick": args.quick, "repeats": repeats}
    runners = {
        "scan": lambda: bench_scan(size, repeats),
        "layer": lambda: bench_layer(size, repeats),
        "irregular": lambda: bench_irregular(size, repeats),
        "step": lambda: bench_step(args.quick, repeats),
        "memory": lambda: bench_memory(size),
    }
    for name in args.sections:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = runners[name]()
    _print_report(results)
    with open(args.json, "w") as handle:
        json.dump(results, handle, indent=2)
    print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
