"""The real-data benchmark: s5ssm's defaults against aeon's MiniRocket on UEA/UCR sets.

Run it through benchmarks/ucr.sh (its header has the usage). The steps:
1. the aeon wheel (which ships the sets) is downloaded from the package registry into
   the cache and each set's NAME_TRAIN.ts / NAME_TEST.ts extracted from it;
2. a venv for aeon is made in the cache (aeon pins its own numba, so it cannot share
   s5ssm's environment) and ucr_minirocket.py fits MiniRocket there, set by set;
3. `s5ssm train --data NAME_TRAIN.ts --test-data NAME_TEST.ts --run_dir DIR --quiet`
   runs once per seed with s5ssm's defaults, and DIR/summary.json is read;
4. a markdown table is printed and the results written as JSON.
Work already in the cache (the wheel, the extracted files, the aeon venv) is reused.
Only the standard library is used here, so any python3 can run it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from pathlib import Path

AEON_VERSION = "1.6.0"
REPO = Path(__file__).resolve().parent.parent
MINIROCKET_SCRIPT = Path(__file__).resolve().parent / "ucr_minirocket.py"
# The panel of issue 17: six classification sets and one regression set.
PANEL_CLASSIFICATION = ["ACSF1", "ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand", "OSULeaf"]
PANEL = PANEL_CLASSIFICATION + ["Covid3Month"]
UNEQUAL = ["PickupGestureWiimoteZ", "JapaneseVowels"]  # unequal lengths: s5ssm only if aeon refuses
QUICK_SETS = ["ItalyPowerDemand", "BasicMotions", "Covid3Month"]  # small: univariate, 6 channels, regression
DEFAULT_SEEDS = [0, 1, 2]


# ---------------------------------------------------------------- the cache: data and aeon


def default_cache() -> Path:
    """UCR_CACHE, else ~/.cache/s5ssm-ucr."""
    return Path(os.environ.get("UCR_CACHE") or Path.home() / ".cache" / "s5ssm-ucr")


def run_checked(cmd: list[str], what: str) -> None:
    """Run cmd; a failure is a SystemExit saying what was being done, with its output's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"error: {what} failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")


def aeon_wheel(cache: Path) -> Path:
    """The aeon wheel in the cache, downloaded (no dependencies) from the registry if absent."""
    found = sorted(cache.glob(f"aeon-{AEON_VERSION}-*.whl"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        print(f"downloading aeon=={AEON_VERSION} into {cache}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", f"aeon=={AEON_VERSION}", "-d", str(cache)]
        run_checked(cmd, f"downloading the aeon wheel into UCR_CACHE={cache}")
        found = sorted(cache.glob(f"aeon-{AEON_VERSION}-*.whl"))
        if not found:
            raise SystemExit(f"error: pip download left no aeon-{AEON_VERSION}-*.whl in UCR_CACHE={cache}")
    return found[-1]


def set_files(cache: Path, name: str) -> tuple[Path, Path]:
    """(train, test) .ts paths of a set inside the cache (present or not)."""
    folder = cache / "data" / name
    return folder / f"{name}_TRAIN.ts", folder / f"{name}_TEST.ts"


def extract_sets(cache: Path, names: list[str]) -> None:
    """Extract aeon/datasets/data/NAME/NAME_{TRAIN,TEST}.ts of every set not yet in the cache."""
    missing = [n for n in names if not all(p.is_file() for p in set_files(cache, n))]
    if not missing:
        return
    wheel = aeon_wheel(cache)
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        for name in missing:
            for path in set_files(cache, name):
                member = f"aeon/datasets/data/{name}/{path.name}"
                if member not in members:
                    raise SystemExit(f"error: --sets {name}: {wheel.name} has no {member}")
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(".ts.partial")  # renamed once complete
                partial.write_bytes(archive.read(member))
                partial.replace(path)


def aeon_python(cache: Path) -> Path:
    """The python of the aeon venv in the cache, made and installed from the wheel if needed."""
    venv = cache / "aeon-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".s5ssm-ucr-installed"
    if not stamp.is_file():
        wheel = aeon_wheel(cache)
        print(f"installing aeon {AEON_VERSION} and its dependencies into {venv}", file=sys.stderr)
        if not python.is_file():
            run_checked([sys.executable, "-m", "venv", str(venv)], f"making the aeon venv {venv}")
        run_checked([str(python), "-m", "pip", "install", "--quiet", str(wheel)], f"installing {wheel.name} into {venv}")
        stamp.touch()
    return python


# ---------------------------------------------------------------- what a set is


def ts_info(path: Path) -> dict:
    """The task of a .ts file from its header, and for regression the targets' variance.

    Returns {"task": "classification"|"regression", "unequal_length": bool,
    "target_variance": float (regression only)}. The target is the last ':' field of a line.
    """
    header, targets = {}, []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            text = line.strip()
            if not text or text[0] in "#%":
                continue
            if "@data" in header:
                targets.append(text.rsplit(":", 1)[-1])
                continue
            key, _, value = text.partition(" ")
            header[key.lower()] = value.strip().lower()
    if "@data" not in header:
        raise SystemExit(f"error: {path}: no @data line: not a .ts file")
    regression = header.get("@targetlabel", "").startswith("true")
    if not regression and not header.get("@classlabel", "").startswith("true"):
        raise SystemExit(f"error: {path}: the header has neither '@classLabel true' nor '@targetLabel true'")
    info = {"task": "regression" if regression else "classification",
            "unequal_length": header.get("@equallength") == "false"}  # fmt: skip
    if regression:
        info["target_variance"] = statistics.pvariance([float(t) for t in targets])
    return info


# ---------------------------------------------------------------- the two contenders


def default_s5ssm_command() -> list[str]:
    """`./run.sh s5ssm` of this repository, else the `s5ssm` on PATH."""
    run_sh = REPO / "run.sh"
    if run_sh.is_file():
        return [str(run_sh), "s5ssm"]
    found = shutil.which("s5ssm")
    if not found:
        raise SystemExit("error: no s5ssm: neither run.sh beside benchmarks/ nor `s5ssm` on PATH; give --s5ssm")
    return [found]


def check_s5ssm(command: list[str]) -> None:
    """`s5ssm tasks` once before anything else: fails fast on a wrong --s5ssm, and through
    ./run.sh it makes s5ssm's environment (minutes, the first time) outside the timings."""
    print(f"checking the s5ssm command: {shlex.join(command)} tasks", file=sys.stderr)
    try:
        run_checked([*command, "tasks"], "the s5ssm command (--s5ssm)")
    except OSError as exc:
        raise SystemExit(f"error: --s5ssm {shlex.join(command)}: cannot run it: {exc}") from None


def read_summary(run_dir: Path) -> dict:
    """The test result of a run from RUN_DIR/summary.json.

    Returns {"metric", "value" (the test split's accuracy or mse), "param_count",
    "wall_seconds", "best_epoch"}.
    """
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ValueError(f"{path}: no summary.json (the run did not finish)")
    summary = json.loads(path.read_text())
    try:
        metric = summary["metric"]
        return {"metric": metric, "value": float(summary["results"]["test"][metric]),
                "param_count": int(summary["param_count"]), "wall_seconds": float(summary["wall_seconds"]),
                "best_epoch": summary.get("best_epoch")}  # fmt: skip
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: missing key {exc} (expected metric, results.test.<metric>, param_count, wall_seconds)") from None


def last_line(text: str) -> str:
    """The last non-empty line of a log: usually the error message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def run_s5ssm(command: list[str], train: Path, test: Path, run_dir: Path, seed: int, extra: list[str]) -> dict:
    """One `s5ssm train` with its defaults (plus extra); its log is kept beside run_dir.

    Returns read_summary's dict plus "seed", "run_dir", "process_seconds", or
    {"seed", "run_dir", "error"} when the run fails.
    """
    cmd = [*command, "train", "--data", str(train), "--test-data", str(test), "--run_dir", str(run_dir),
           "--quiet", "--seed", str(seed), *extra]  # fmt: skip
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = round(time.perf_counter() - start, 1)
    Path(f"{run_dir}.log").write_text(f"$ {shlex.join(cmd)}\n{proc.stdout}{proc.stderr}")
    result = {"seed": seed, "run_dir": str(run_dir)}
    if proc.returncode != 0:
        return {**result, "error": last_line(proc.stderr or proc.stdout)}
    try:
        return {**result, **read_summary(run_dir), "process_seconds": seconds}
    except ValueError as exc:
        return {**result, "error": str(exc)}


def run_minirocket(python: Path, train: Path, test: Path, task: str) -> dict:
    """ucr_minirocket.py in the aeon venv: {"status", "metric", "value", "seconds"} or an error."""
    proc = subprocess.run([str(python), str(MINIROCKET_SCRIPT), str(train), str(test), task], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"status": "failed", "error": last_line(proc.stderr or proc.stdout)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seeds_summary(runs: list[dict]) -> dict:
    """Mean value, wall time and parameters over the seeds; the mean is None if any seed failed."""
    done = [r for r in runs if "error" not in r]
    ok = bool(done) and len(done) == len(runs)
    return {"runs": runs,
            "mean": statistics.fmean(r["value"] for r in done) if ok else None,
            "wall_seconds_mean": statistics.fmean(r["wall_seconds"] for r in done) if done else None,
            "param_count": done[0]["param_count"] if done else None}  # fmt: skip


# ---------------------------------------------------------------- the table


def fmt_value(metric: str, value: float | None) -> str:
    """Accuracy with 3 decimals, mse with 3 significant digits."""
    if value is None:
        return "-"
    return f"{value:.3f}" if metric == "accuracy" else f"{value:.3g}"


def fmt_seconds(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}"


def fails(error: str) -> str:
    """A failure in a table cell: the message without its 'error: ' prefix, cut to 80 characters."""
    return "fails: " + error.removeprefix("error: ")[:80].replace("|", "/")  # a "|" would split the cell


def s5ssm_cell(metric: str, s5: dict) -> str:
    """'mean (seed values)', failed seeds shown with their error."""
    values = [fmt_value(metric, r["value"]) if "error" not in r else fails(r["error"]) for r in s5["runs"]]
    if s5["mean"] is None:
        return "; ".join(values)
    return fmt_value(metric, s5["mean"]) + (f" ({', '.join(values)})" if len(values) > 1 else "")


def minirocket_cell(metric: str, mr: dict) -> str:
    if mr["status"] == "ok":
        return fmt_value(metric, mr["value"])
    if mr["status"] == "failed":
        return fails(mr.get("error", ""))
    return mr["status"]  # "cannot (unequal lengths)", "not run"


def set_row(name: str, entry: dict) -> str:
    metric = entry["metric"]
    label = metric if metric == "accuracy" else f"test MSE (targets' variance {entry['target_variance']:.3g})"
    s5, mr = entry["s5ssm"], entry["minirocket"]
    params = f"{s5['param_count']:,}" if s5["param_count"] else "-"
    cells = [name, label, s5ssm_cell(metric, s5), minirocket_cell(metric, mr), fmt_seconds(s5["wall_seconds_mean"]),
             fmt_seconds(mr.get("seconds")), params]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def classification_mean(sets: dict) -> dict | None:
    """Mean accuracy of s5ssm and MiniRocket over the panel's classification sets that were run.

    Only sets where s5ssm has a mean count; MiniRocket's mean is over the same sets (None
    if it lacks any of them). "complete" says whether all six panel sets are in it.
    """
    names = [n for n in PANEL_CLASSIFICATION if n in sets and sets[n]["s5ssm"]["mean"] is not None]
    if not names:
        return None
    minirocket = [sets[n]["minirocket"].get("value") for n in names]
    return {"sets": names, "complete": names == PANEL_CLASSIFICATION,
            "s5ssm": statistics.fmean(sets[n]["s5ssm"]["mean"] for n in names),
            "minirocket": statistics.fmean(minirocket) if None not in minirocket else None}  # fmt: skip


def format_table(results: dict) -> str:
    """The markdown table of a results dict (as written to JSON): one row per set, then the mean."""
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = [f"UEA/UCR sets (aeon {AEON_VERSION} files), {results['date']}, commit {results['commit']}, "
             f"{results['cpus']} CPUs; s5ssm defaults, seeds {seeds}"
             + (f", extra args: {shlex.join(results['extra_args'])}" if results["extra_args"] else ""),
             "",
             "| set | metric | s5ssm: mean (per seed) | MiniRocket | s5ssm s/seed | MiniRocket s | s5ssm parameters |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    lines += [set_row(name, entry) for name, entry in results["sets"].items()]
    mean = results.get("classification_mean")
    if mean:
        label = "6-set classification mean" if mean["complete"] else f"mean of {', '.join(mean['sets'])}"
        lines.append(f"| {label} | accuracy | {mean['s5ssm']:.3f} | {fmt_value('accuracy', mean['minirocket'])} |  |  |  |")
    return "\n".join(lines)


# ---------------------------------------------------------------- the run


def git_commit() -> str:
    """Short commit of this repository, '-dirty' when tracked files are modified."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_set(name: str, args: argparse.Namespace, extra: list[str], aeon: Path | None, runs_root: Path) -> dict:
    """MiniRocket then s5ssm per seed on one set (one after the other: fair wall times)."""
    train, test = set_files(args.cache, name)
    entry = ts_info(train)
    entry["metric"] = "accuracy" if entry["task"] == "classification" else "mse"
    if entry["task"] == "regression":
        entry["target_variance"] = ts_info(test)["target_variance"]  # of the test split, the MSE's scale
    entry["minirocket"] = run_minirocket(aeon, train, test, entry["task"]) if aeon else {"status": "not run"}
    log(name, "MiniRocket", minirocket_cell(entry["metric"], entry["minirocket"]), entry["minirocket"].get("seconds"))
    runs = []
    for seed in args.seeds:
        run = run_s5ssm(args.s5ssm, train, test, runs_root / f"{name}-seed{seed}", seed, extra)
        log(name, f"s5ssm seed {seed}", run.get("error") or fmt_value(entry["metric"], run["value"]), run.get("wall_seconds"))
        runs.append(run)
    entry["s5ssm"] = seeds_summary(runs)
    return entry


def log(name: str, who: str, what: str, seconds: float | None) -> None:
    print(f"{name}: {who}: {what}" + (f" ({fmt_seconds(seconds)} s)" if seconds is not None else ""), file=sys.stderr, flush=True)


def write_json(results: dict, out: Path) -> None:
    """Atomic write of the results (after every set, so an interrupted run keeps what it did)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(results, indent=2))
    partial.replace(out)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Options before `--`; what follows `--` goes to every `s5ssm train`."""
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(prog="benchmarks/ucr.sh", description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="+", help=f"sets to run (default: {' '.join(PANEL + UNEQUAL)})")
    parser.add_argument("--seeds", nargs="+", type=int, help="s5ssm seeds (default: 0 1 2; --quick: 0)")
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_SETS)} with one seed")
    parser.add_argument("--no-minirocket", dest="minirocket", action="store_false", help="s5ssm only (no aeon venv)")
    parser.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/ucr-DATE.json)")
    parser.add_argument("--cache", type=Path, default=None, help="download cache (default: $UCR_CACHE or ~/.cache/s5ssm-ucr)")
    parser.add_argument("--s5ssm", type=shlex.split, help="the s5ssm command (default: ./run.sh s5ssm, else s5ssm on PATH)")
    parser.add_argument("--runs-dir", type=Path, help="where the s5ssm runs go (default: CACHE/runs/TIMESTAMP)")
    args = parser.parse_args(own)
    args.sets = args.sets or (QUICK_SETS if args.quick else PANEL + UNEQUAL)
    args.seeds = args.seeds if args.seeds is not None else ([0] if args.quick else DEFAULT_SEEDS)
    args.cache = args.cache or default_cache()
    args.s5ssm = args.s5ssm or default_s5ssm_command()
    return args, extra


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    now = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or REPO / "benchmarks" / "results" / f"ucr-{now:%Y-%m-%d}.json"
    runs_root = args.runs_dir or args.cache / "runs" / f"{now:%Y%m%d-%H%M%S}"
    check_s5ssm(args.s5ssm)
    extract_sets(args.cache, args.sets)
    aeon = aeon_python(args.cache) if args.minirocket else None
    results = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "commit": git_commit(), "cpus": os.cpu_count(),
               "aeon_version": AEON_VERSION, "s5ssm_command": shlex.join(args.s5ssm), "seeds": args.seeds,
               "extra_args": extra, "runs_dir": str(runs_root), "sets": {}}  # fmt: skip
    for name in args.sets:
        results["sets"][name] = run_set(name, args, extra, aeon, runs_root)
        results["classification_mean"] = classification_mean(results["sets"])
        write_json(results, out)
    print(format_table(results))
    print(f"\nwritten: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
