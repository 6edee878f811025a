"""benchmarks/ucr.py without downloads or training: .ts headers, summary.json parsing,
the table and the JSON, and a whole run against a fake `s5ssm` on a pre-filled cache."""

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

UCR_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "ucr.py"
spec = importlib.util.spec_from_file_location("ucr_bench", UCR_PY)
ucr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ucr)

CLASSIFICATION_TS = """# a comment
@problemName Tiny
@univariate true
@equalLength true
@classLabel true a b
@data
1,2,3:a
3,2,1:b
"""
REGRESSION_TS = """@problemName TinyReg
@equalLength false
@targetLabel true
@data
1,2,3:1.0
3,2:3.0
"""

# Writes the summary.json that `s5ssm train` would, with the seed as the test metric
# (so the test can see each seed's value) and the extra arguments echoed in best_epoch.
FAKE_S5SSM = """
import json, sys
from pathlib import Path
args = sys.argv[1:]
if args == ["tasks"]:  # the check benchmarks/ucr.py makes first
    sys.exit(0)
value = lambda flag: args[args.index(flag) + 1]
if "--fail" in args:
    sys.exit("error: --fail: this fake refuses")
regression = "Reg" in value("--data")
metric = "mse" if regression else "accuracy"
run_dir = Path(value("--run_dir"))
run_dir.mkdir(parents=True)
summary = {"metric": metric, "results": {"test": {"loss": 0.0, metric: 0.5 + int(value("--seed")) / 10}},
           "param_count": 1234, "wall_seconds": 2.5, "best_epoch": " ".join(args[args.index("--seed") + 2:])}
(run_dir / "summary.json").write_text(json.dumps(summary))
"""


def write_summary(run_dir: Path, metric: str, value: float) -> None:
    run_dir.mkdir(parents=True)
    summary = {"metric": metric, "results": {"test": {"loss": 1.0, metric: value}, "val": {"loss": 1.0, metric: 0.0}},
               "param_count": 5678, "wall_seconds": 61.25, "best_epoch": 7}  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_read_summary_takes_the_test_metric(tmp_path):
    write_summary(tmp_path / "cls", "accuracy", 0.875)
    write_summary(tmp_path / "reg", "mse", 0.0021)
    assert ucr.read_summary(tmp_path / "cls") == {
        "metric": "accuracy", "value": 0.875, "param_count": 5678, "wall_seconds": 61.25, "best_epoch": 7}  # fmt: skip
    assert ucr.read_summary(tmp_path / "reg")["value"] == 0.0021


def test_read_summary_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(ValueError, match="no summary.json"):
        ucr.read_summary(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"metric": "accuracy", "results": {}}))
    with pytest.raises(ValueError, match=r"summary.json: missing key 'test'"):
        ucr.read_summary(tmp_path)


def test_ts_info_reads_task_lengths_and_target_variance(tmp_path):
    (tmp_path / "c.ts").write_text(CLASSIFICATION_TS)
    (tmp_path / "r.ts").write_text(REGRESSION_TS)
    assert ucr.ts_info(tmp_path / "c.ts") == {"task": "classification", "unequal_length": False}
    assert ucr.ts_info(tmp_path / "r.ts") == {"task": "regression", "unequal_length": True, "target_variance": 1.0}
    (tmp_path / "bad.ts").write_text("@problemName X\n@data\n1,2:3\n")
    with pytest.raises(SystemExit, match="neither '@classLabel true' nor '@targetLabel true'"):
        ucr.ts_info(tmp_path / "bad.ts")


def entry(metric, values, minirocket, **extra):
    runs = [{"seed": i, "error": v} if isinstance(v, str) else
            {"seed": i, "value": v, "param_count": 1000, "wall_seconds": 30.0} for i, v in enumerate(values)]  # fmt: skip
    return {"metric": metric, "s5ssm": ucr.seeds_summary(runs), "minirocket": minirocket, **extra}


def test_table_rows_seed_values_and_the_classification_mean():
    sets = {name: entry("accuracy", [0.8, 0.9], {"status": "ok", "value": 0.9, "seconds": 1.5})
            for name in ucr.PANEL_CLASSIFICATION}  # fmt: skip
    sets["ACSF1"] = entry("accuracy", [0.5, 0.7], {"status": "ok", "value": 0.6, "seconds": 12.0})
    sets["Covid3Month"] = entry("mse", [0.002, 0.004], {"status": "ok", "value": 0.00168, "seconds": 0.5},
                                target_variance=0.002)  # fmt: skip
    sets["PickupGestureWiimoteZ"] = entry("accuracy", [0.4, "error: fraction=0.1 of N=50 leaves one part empty"],
                                          {"status": "cannot (unequal lengths)", "error": "unequal"})  # fmt: skip
    results = {"date": "2026-12-03 08:00 UTC", "commit": "abc1234", "cpus": 2, "seeds": [0, 1],
               "extra_args": ["--epochs", "3"], "sets": sets, "classification_mean": ucr.classification_mean(sets)}  # fmt: skip
    table = ucr.format_table(results)
    lines = table.splitlines()
    assert "2026-12-03 08:00 UTC, commit abc1234, 2 CPUs" in lines[0] and "extra args: --epochs 3" in lines[0]
    assert "| ACSF1 | accuracy | 0.600 (0.500, 0.700) | 0.600 | 30 | 12 | 1,000 |" in lines
    assert "| GunPoint | accuracy | 0.850 (0.800, 0.900) | 0.900 | 30 | 1.5 | 1,000 |" in lines
    assert "| Covid3Month | test MSE (targets' variance 0.002) | 0.003 (0.002, 0.004) | 0.00168 | 30 | 0.5 | 1,000 |" in lines
    pickup = next(line for line in lines if line.startswith("| PickupGestureWiimoteZ"))
    assert "0.400; fails: fraction=0.1 of N=50" in pickup and "cannot (unequal lengths)" in pickup
    mean = results["classification_mean"]
    assert mean["complete"] and mean["s5ssm"] == pytest.approx((0.6 + 5 * 0.85) / 6)
    assert mean["minirocket"] == pytest.approx((0.6 + 5 * 0.9) / 6)
    assert lines[-1].startswith(f"| 6-set classification mean | accuracy | {mean['s5ssm']:.3f} | 0.850 |")
    json.dumps(results)  # what main writes


def test_whole_run_on_a_filled_cache_with_a_fake_s5ssm(tmp_path, capsys):
    cache = tmp_path / "cache"
    for name, text in (("GunPoint", CLASSIFICATION_TS), ("TinyReg", REGRESSION_TS)):
        for path in ucr.set_files(cache, name):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    fake = tmp_path / "fake_s5ssm.py"
    fake.write_text(textwrap.dedent(FAKE_S5SSM))
    out = tmp_path / "r.json"
    argv = ["--sets", "GunPoint", "TinyReg", "--seeds", "0", "2", "--no-minirocket", "--cache", str(cache),
            "--s5ssm", f"{sys.executable} {fake}", "--out", str(out), "--", "--epochs", "3"]  # fmt: skip
    assert ucr.main(argv) == 0
    results = json.loads(out.read_text())
    gun, reg = results["sets"]["GunPoint"], results["sets"]["TinyReg"]
    assert [r["value"] for r in gun["s5ssm"]["runs"]] == [0.5, 0.7] and gun["s5ssm"]["mean"] == pytest.approx(0.6)
    assert gun["s5ssm"]["runs"][0]["best_epoch"] == "--epochs 3"  # the extra arguments reached s5ssm
    assert reg["metric"] == "mse" and reg["target_variance"] == 1.0 and gun["minirocket"] == {"status": "not run"}
    assert results["classification_mean"]["sets"] == ["GunPoint"] and not results["classification_mean"]["complete"]
    assert Path(gun["s5ssm"]["runs"][0]["run_dir"] + ".log").read_text().startswith("$ ")
    printed = capsys.readouterr().out
    assert "| GunPoint | accuracy | 0.600 (0.500, 0.700) | not run |" in printed
    assert "| mean of GunPoint | accuracy | 0.600 | - |" in printed
    # a failing s5ssm is reported in the table, not raised
    assert ucr.main(argv + ["--fail"]) == 0
    failed = json.loads(out.read_text())["sets"]["GunPoint"]["s5ssm"]
    assert failed["mean"] is None and failed["runs"][0]["error"] == "error: --fail: this fake refuses"
    with pytest.raises(SystemExit, match="the s5ssm command"):
        ucr.main(argv[: argv.index("--s5ssm")] + ["--s5ssm", f"{sys.executable} -c 'raise SystemExit(3)'"])
    with pytest.raises(SystemExit, match="--s5ssm /no/such/s5ssm: cannot run it"):
        ucr.main(argv[: argv.index("--s5ssm")] + ["--s5ssm", "/no/such/s5ssm"])
