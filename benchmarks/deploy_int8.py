"""The exported graphs of a trained classification run, float32 against --quantize int8.

    python benchmarks/deploy_int8.py RUN_DIR [--frames 400]

For the run's best checkpoint (as `s5ssm eval` loads it) this exports the sequence graph
twice, float32 and int8 (s5ssm.export), runs both in onnxruntime over the run's test
split, and prints each one's test accuracy beside the eager model's. Then it exports the
step twice and times both at batch 1, one thread, interleaved in blocks of 20 frames
(median ms per frame), with the file sizes. Needs the deploy extra (pip install -e ".[deploy]").
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from s5ssm.data import collate
from s5ssm.export import export
from s5ssm.options import ALL_DEFAULTS
from s5ssm.training.build import load_run
from s5ssm.training.evaluation import evaluate

BATCH = 64


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def accuracy(path: Path, dataset) -> float:
    """Test accuracy of an exported sequence graph over `dataset` (batches of BATCH, padded and masked)."""
    graph, right = session(path), 0
    for start in range(0, len(dataset), BATCH):
        batch = collate([dataset[i] for i in range(start, min(len(dataset), start + BATCH))])
        logits = graph.run(None, {"x": batch["x"].numpy(), "mask": batch["mask"].numpy()})[0]
        right += int((logits.argmax(-1) == batch["y"].numpy()).sum())
    return right / len(dataset)


def step_latency(paths: dict[str, Path], frames: int, embed_dim: int, block: int = 20) -> dict[str, float]:
    """Median ms per frame of each exported step at batch 1, the graphs timed in turn."""
    graphs = {name: session(path) for name, path in paths.items()}
    outputs = {name: [o.name for o in g.get_outputs()] for name, g in graphs.items()}
    feeds = {name: {i.name: np.zeros([1] + i.shape[1:], np.float32) for i in g.get_inputs()[1:]}
             for name, g in graphs.items()}  # fmt: skip
    x = np.random.default_rng(0).standard_normal((frames, 1, embed_dim)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in graphs}
    for t0 in range(0, frames, block):
        for name, graph in graphs.items():
            for t in range(t0, min(frames, t0 + block)):
                start = time.perf_counter()
                out = dict(zip(outputs[name], graph.run(None, {"x": x[t], **feeds[name]})))
                times[name].append(time.perf_counter() - start)
                out.pop("y")
                feeds[name] = {k.replace("_out", "_in"): v for k, v in out.items()}
    return {name: statistics.median(ts[block:]) * 1e3 for name, ts in times.items()}  # first block: warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--frames", type=int, default=400)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg, model, data = load_run(args.run_dir, defaults=ALL_DEFAULTS)
    if data.info["kind"] != "classification":
        raise SystemExit(f"{args.run_dir}: a classification run is needed (test accuracy), got {data.info['kind']}")
    test = data.splits["test"]
    with torch.no_grad():
        eager = evaluate(model, test, data.info, BATCH, "cpu")[data.info["metric"]]
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for what in ("sequence", "step"):
            for quantize in (None, "int8"):
                name = f"{what}-{quantize or 'float32'}"
                files[name] = export(model, what=what, quantize=quantize, out=Path(tmp) / f"{name}.onnx")
        result = {
            "run": str(args.run_dir),
            "test_sequences": len(test),
            "eager_accuracy": eager,
            "float32_accuracy": accuracy(files["sequence-float32"], test),
            "int8_accuracy": accuracy(files["sequence-int8"], test),
        }
        result["int8_minus_float32_points"] = 100 * (result["int8_accuracy"] - result["float32_accuracy"])
        latency = step_latency({"float32": files["step-float32"], "int8": files["step-int8"]}, args.frames,
                               model.embed_dim)  # fmt: skip
        result.update({f"step_ms_per_frame_{k}": v for k, v in latency.items()})
        result.update({f"step_file_KiB_{q}": files[f"step-{q}"].stat().st_size / 1024 for q in ("float32", "int8")})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
