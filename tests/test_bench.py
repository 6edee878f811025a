"""`s5ssm bench --quick` runs every section and writes complete JSON (no timing asserts)."""

import json

from s5ssm import bench


def test_quick_bench_writes_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    for section in bench.SECTIONS:
        assert section in results, section
    for backend in ("cpu", "parallel", "reference"):
        assert results["scan"][backend]["forward_ms"] > 0
        assert results["scan"][backend]["forward_backward_ms"] > 0
    assert results["layer"]["forward_over_gemms"] > 0
    assert results["irregular"]["forward_backward_ratio"] > 0
    assert results["step"]["step_ms_per_frame"] > 0
    row = results["memory"]["rows"][0]
    assert {"L", "cpu_MiB", "parallel_MiB", "cpu_irregular_MiB"} <= set(row)
    printed = capsys.readouterr().out
    assert "scan" in printed and "layer" in printed and "peak memory" in printed


def test_bad_repeats_is_rejected(capsys):
    try:
        bench.main(["--repeats", "0"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "--repeats" in capsys.readouterr().err
