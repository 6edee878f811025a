"""`s5ssm bench --quick` runs every section and writes complete JSON (no timing asserts)."""

import importlib.util
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from s5ssm import bench


def test_quick_bench_writes_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for section in bench.SECTIONS:
        assert section in results, section
    for backend in ("cpu", "cpu_reverse", "parallel", "reference"):
        assert results["scan"][backend]["forward_ms"] > 0
        assert results["scan"][backend]["forward_backward_ms"] > 0
    assert results["layer"]["forward_over_gemms"] > 0
    assert results["irregular"]["forward_backward_ratio"] > 0
    for label in ("default_threads", "one_thread"):
        assert results["step"][label]["step_ms_per_frame"] > 0
        if importlib.util.find_spec("onnxruntime") is not None:  # the exported step beside it
            assert results["step"][label]["onnx_over_compiled_step"] > 0
    rows = results["memory"]["rows"]
    assert [r["L"] for r in rows] == bench.QUICK["memory_lengths"]
    for row in rows:
        for column in ("cpu", "parallel", "cpu_irregular"):
            assert "error" not in row[column], row[column]
            assert row[column]["tensor_MiB"] > 0
    assert results["memory"]["summary"]["cpu_over_parallel_tensors"] > 0
    for what in ("scan", "layer"):  # measured in fresh processes, plain import and tuned
        assert results["allocator"][what]["plain_ms"] > 0 and results["allocator"][what]["tuned_ms"] > 0
    printed = capsys.readouterr().out
    assert "scan" in printed and "layer" in printed and "peak memory" in printed


def test_bad_device_is_rejected(capsys, monkeypatch):
    for bad, message in (("gpu", "--device must be cpu or cuda"), ("meta", "--device must be cpu or cuda")):
        with pytest.raises(SystemExit):
            bench.main(["--device", bad])
        assert message in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda"])
    assert "--device cuda: CUDA is not available" in capsys.readouterr().err


@pytest.mark.cuda
def test_quick_bench_on_cuda(tmp_path, capsys):
    """The GPU sections (scan, layer, irregular, memory) with the triton backend; step is CPU-only."""
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--device", "cuda", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert "step" not in results and "allocator" not in results
    for row in ("triton", "triton_reverse", "parallel", "reference"):
        assert results["scan"][row]["forward_backward_ms"] > 0
    assert results["layer"]["parallel"]["forward_backward_speedup"] > 0
    for row in results["memory"]["rows"]:
        for column in ("triton", "parallel", "triton_irregular"):
            assert row[column]["tensor_MiB"] > 0, row
    with pytest.raises(SystemExit):
        bench.main(["--device", "cuda", "--sections", "step"])
    assert "--sections step runs on the CPU only" in capsys.readouterr().err


def test_gpu_script_parses_and_names_what_exists():
    """benchmarks/gpu.sh is valid bash; the sections and the config it runs exist."""
    root = Path(__file__).resolve().parents[1]
    script = root / "benchmarks" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    sections = re.search(r"--sections ([a-z ]+)", text).group(1).split()
    assert sections and set(sections) <= set(bench.SECTIONS) - set(bench.CPU_ONLY)
    assert (root / re.search(r"--config (\S+)", text).group(1)).is_file()
    assert "pytest -m cuda" in text


def test_bad_repeats_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main(["--repeats", "0"])
    assert exit.value.code == 2
    assert "--repeats" in capsys.readouterr().err


def test_growth_exponent_skips_peaks_that_are_not_positive():
    """A quick run's peaks are fractions of a MiB and can round to 0: no log of them."""
    from s5ssm.bench.peak import _growth

    rows = [{"L": 256, "cpu": {"rss_MiB": 0.0}}, {"L": 512, "cpu": {"rss_MiB": 1.0}}, {"L": 1024, "cpu": {"rss_MiB": 2.0}}]
    assert _growth(rows, "cpu", "rss_MiB") == pytest.approx(1.0)
    assert _growth(rows[:2], "cpu", "rss_MiB") is None
    assert _growth([{"L": 256, "cpu": {"rss_MiB": -0.1}}, *rows[1:2]], "cpu", "rss_MiB") is None
