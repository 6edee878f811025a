"""`s5ssm bench`: speed and memory of the scan, the layer and streaming, as ratios.

Every figure is the median of repeated runs, shown as a ratio against a baseline
measured in the same process, interleaved with it (these machines are shared and noisy):

    scan       each backend's forward and forward+backward (the compiled one also in
               reverse) vs the memory floor (dst.copy_(src) over the states' bytes); and
               vs JAX's associative_scan
    layer      S5SSM forward and forward+backward vs its own GEMMs alone (the compute
               limit); and vs the layer written in JAX as the paper's code does it
    irregular  step_scale [B, L] vs a scalar step_scale (time; memory in `memory`)
    step       model.step per frame at batch 1 vs recomputing a 60-frame window (and vs
               the same step in torch ops, and the exported step in onnxruntime)
    allocator  the bare scan and the layer in a plain script (`import s5ssm` only) vs
               after s5ssm.memory.keep_freed_memory(), each side in fresh subprocesses
    memory     peak memory of layer forward+backward per sequence length and backend,
               each cell in a fresh subprocess (see peak.py)

Run as `s5ssm bench [--quick] [--device cpu|cuda] [--sections ...] [--json PATH]` or
`python -m s5ssm.bench`. JAX figures appear when jax is installed (`pip install -e .[bench]`),
on the CPU. With --device cuda the scan, layer, irregular and memory sections run on the
GPU with the triton backend in place of the compiled CPU one (the layer is also timed
against the parallel backend, memory is torch's CUDA allocator's peak); step and allocator
are CPU-only. The process keeps freed memory (s5ssm.memory.keep_freed_memory), as the CLI
does: the allocator section shows what a script that does not call it gets.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..io import atomic_write_text
from ..memory import keep_freed_memory
import torch

from .allocator import bench_allocator
from .peak import bench_memory, bench_memory_cuda
from .sections import bench_irregular, bench_layer, bench_scan, bench_step
from .timing import load_average, machine_info

SECTIONS = ("scan", "layer", "irregular", "step", "allocator", "memory")
CPU_ONLY = ("step", "allocator")
# the issue's sizes: scan B=8, L=4096, P=128 complex64; layer H=128, state_size=128 conj_sym
FULL = dict(batch=8, length=4096, state=128, hidden=128, layer_state=128, reference_length=256,
            memory_lengths=[4096, 16384, 65536], memory_ratio_length=16384, frames=400, step_budget_s=20.0)  # fmt: skip
QUICK = dict(batch=2, length=256, state=16, hidden=16, layer_state=16, reference_length=64,
             memory_lengths=[256, 512], memory_ratio_length=512, frames=20, step_budget_s=2.0)  # fmt: skip


def run(sections: list[str], quick: bool, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """Run the named sections on `device`; returns the JSON-ready results."""
    size = QUICK if quick else FULL
    results: dict = {"machine": machine_info(), "quick": quick, "repeats": repeats, "device": str(device)}
    lengths, ratio_length = size["memory_lengths"], size["memory_ratio_length"]
    runners = {
        "scan": lambda: bench_scan(size, repeats, device),
        "layer": lambda: bench_layer(size, repeats, device),
        "irregular": lambda: bench_irregular(size, repeats, device),
        "step": lambda: bench_step(size["frames"], size["step_budget_s"]),
        "allocator": lambda: bench_allocator(size, repeats, rounds=1 if quick else 3),
        "memory": lambda: (bench_memory(size, lengths, ratio_length) if device.type == "cpu"
                           else bench_memory_cuda(size, lengths, ratio_length, device)),  # fmt: skip
    }
    for name in sections:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        results[name] = runners[name]()
    results["machine"]["loadavg_at_end"] = load_average()
    return results


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(results: dict) -> None:
    """The table of ratios (the JSON has every figure, spreads included)."""
    machine = results["machine"]
    print("machine:", ", ".join(f"{k}={v}" for k, v in machine.items()))
    if "scan" in results:
        s = results["scan"]
        shape = s["shape"]
        print(f"\nscan B={shape['B']} L={shape['L']} P={shape['P']} {s['dtype']}, Λ̄ {s['lambda_bar']}: "
              f"copy_ {s['copy_ms']:.2f} ms ({s['copy_GBps']:.1f} GB/s), "
              f"floor fwd+bwd {s['floor_forward_backward_ms']:.2f} ms")  # fmt: skip
        print(f"  {'backend':<15}{'fwd ms':>10}{'copy/fwd':>10}{'fwd+bwd ms':>12}{'floor/fwd+bwd':>15}")
        for b in s["rows"]:
            r = s[b]
            print(f"  {b.replace('_', ' '):<15}{r['forward_ms']:>10.2f}{r['copy_throughput_ratio']:>10.2f}"
                  f"{r['forward_backward_ms']:>12.2f}{r['floor_throughput_ratio_forward_backward']:>15.2f}")  # fmt: skip
        if s["reference"].get("note"):
            print(f"  reference: {s['reference']['note']}")
        if s.get("jax"):
            j = s["jax"]
            print(f"  JAX {j['what']}: fwd {j['forward_ms']:.2f} ms, fwd+bwd {j['forward_backward_ms']:.2f} ms; "
                  f"cpu is {j['cpu_forward_speedup']:.1f}x (fwd) and {j['cpu_forward_backward_speedup']:.1f}x "
                  f"(fwd+bwd) faster; max rel diff {j['max_rel_diff']:.1e}")  # fmt: skip
    if "layer" in results:
        r = results["layer"]
        print(f"\nlayer {r['shape']}, scan {r['scan_backend']}:")
        print(f"  forward          {r['forward_ms']:8.2f} ms = {r['forward_over_gemms']:.2f}x its GEMMs "
              f"({r['gemms_forward_ms']:.2f} ms, {r['gemms_forward_GFLOPs']:.0f} GFLOP/s)")  # fmt: skip
        print(f"  forward+backward {r['forward_backward_ms']:8.2f} ms = {r['forward_backward_over_gemms']:.2f}x "
              f"its GEMMs ({r['gemms_forward_backward_ms']:.2f} ms)")  # fmt: skip
        if r.get("parallel"):
            p = r["parallel"]
            print(f"  vs the parallel backend: forward+backward {p['forward_backward_speedup']:.1f}x faster "
                  f"({p['forward_backward_ms']:.2f} ms)")  # fmt: skip
        if r.get("jax"):
            j = r["jax"]
            print(f"  vs JAX (the paper's layer): forward {j['forward_speedup']:.1f}x faster ({j['forward_ms']:.1f} ms), "
                  f"forward+backward {j['forward_backward_speedup']:.1f}x faster ({j['forward_backward_ms']:.1f} ms); "
                  f"max rel diff {j['max_rel_diff']:.1e}")  # fmt: skip
    if "irregular" in results:
        r = results["irregular"]
        print(f"\nirregular step_scale [B, L] / scalar: forward {r['forward_ratio']:.2f}x "
              f"({r['irregular_forward_ms']:.2f} vs {r['scalar_forward_ms']:.2f} ms), forward+backward "
              f"{r['forward_backward_ratio']:.2f}x ({r['irregular_forward_backward_ms']:.2f} vs "
              f"{r['scalar_forward_backward_ms']:.2f} ms)")  # fmt: skip
    if "step" in results:
        r = results["step"]
        print(f"\nstep: {r['config']}")
        for label in ("default_threads", "one_thread"):
            t = r[label]
            print(f"  {t['threads']} thread(s): {t['step_ms_per_frame']:.3f} ms per frame (p90 {t['step_p90_ms']:.3f}), "
                  f"recomputing the {r['window']}-frame window {t['window_recompute_ms_per_frame']:.2f} ms: "
                  f"{t['speedup_vs_window']:.1f}x faster over {t['frames']} frames; the same step in torch "
                  f"ops {t['torch_ops_step_ms_per_frame']:.3f} ms ({t['speedup_vs_torch_ops']:.1f}x)")  # fmt: skip
            if "onnx_step_ms_per_frame" in t:
                print(f"    the exported step in onnxruntime: {t['onnx_step_ms_per_frame']:.3f} ms per frame, "
                      f"{t['onnx_over_compiled_step']:.2f}x the compiled step's time")  # fmt: skip
        if r.get("onnx_note"):
            print(f"  {r['onnx_note']}")
    if "allocator" in results:
        r = results["allocator"]
        print(f"\nplain script (import s5ssm) vs keep_freed_memory(), {r['rounds']} fresh processes each:")
        for what, label in (("scan", "bare linear_scan forward"), ("layer", "layer forward+backward")):
            t = r[what]
            print(f"  {label:<25}{t['plain_ms']:8.2f} ms plain, {t['tuned_ms']:8.2f} ms tuned: "
                  f"{t['speedup']:.2f}x")  # fmt: skip
    if "memory" in results:
        _print_memory(results["memory"])


def _print_memory(m: dict) -> None:
    """The memory table: rss / live tensors per cell on the CPU, CUDA allocations on a GPU."""
    columns, cuda = m["columns"], m["device"] != "cpu"
    fast, name = columns[0], ("tensors" if cuda else "rss")
    print(f"\npeak memory of layer forward+backward {m['shape']} on {m['device']}, MiB "
          f"({'allocated' if cuda else 'rss / live tensors'}):")  # fmt: skip
    print(f"  {'L':>7}{'input':>8}" + "".join(f"{c.replace('_', ' '):>17}" for c in columns))
    for row in m["rows"]:
        cells = [_memory_cell(row[c], cuda) for c in columns]
        print(f"  {row['L']:>7}{row['input_MiB']:>8.0f}" + "".join(f"{c:>17}" for c in cells))
    s = m["summary"]
    growth = ", ".join(f"{c.replace('_', ' ')} {_fmt(s[f'{c}_growth_exponent_{name}'])}" for c in columns)
    print(f"  growth exponent (peak ∝ L^k), {name}: {growth}")
    names = ("tensors",) if cuda else ("rss", "tensors")
    ratios = ", ".join(f"{n} {_fmt(s[f'{fast}_over_parallel_{n}'])}" for n in names)
    print(f"  {fast} / parallel at L={s['ratio_at_L']}: {ratios}")


def _memory_cell(cell: dict, cuda: bool = False) -> str:
    if "error" in cell or "skipped" in cell:
        return "-"
    if cuda:
        return f"{cell['tensor_MiB']:.0f}"
    return f"{_fmt(cell.get('rss_MiB'), '.0f')} / {cell['tensor_MiB']:.0f}"


def _device(parser: argparse.ArgumentParser, name: str) -> torch.device:
    """--device as a torch.device: the CPU, or an available CUDA device."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda[:N], got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available (torch {torch.__version__})")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s5ssm bench", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per measurement (default 15, quick 2)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=None,
                        help=f"default: all ({', '.join(SECTIONS)}); with --device cuda all but {' and '.join(CPU_ONLY)}")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N (the triton backend; default cpu)")
    parser.add_argument("--json", default="bench-results.json", help="where to write the results")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    device = _device(parser, args.device)
    sections = args.sections or [s for s in SECTIONS if device.type == "cpu" or s not in CPU_ONLY]
    for name in CPU_ONLY:
        if device.type == "cuda" and name in sections:
            parser.error(f"--sections {name} runs on the CPU only: run it without --device cuda")
    keep_freed_memory()
    results = run(sections, args.quick, args.repeats or (2 if args.quick else 15), device)
    print_report(results)
    atomic_write_text(args.json, json.dumps(results, indent=2))
    print(f"\nresults written to {args.json}")
    return 0
