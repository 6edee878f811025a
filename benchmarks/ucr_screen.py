"""Choose s5ssm's defaults on training data only: score settings on holdouts of each UCR
set's TRAIN split (the TEST splits are never read here; benchmarks/ucr.sh reports them).

    .venv/bin/python benchmarks/ucr_screen.py --tag base
    .venv/bin/python benchmarks/ucr_screen.py --tag reg --params '{"dropout": 0.25}' --seeds 0 1

Each (set, seed) trains S5Classifier / S5Regressor with the given parameters (the fitted
defaults for the rest) on 70% of TRAIN, stratified, and scores the other 30%: accuracy,
or for regression the MSE divided by the held-out targets' variance. Results are appended
to a JSON-lines file (default benchmarks/results/ucr-screen.jsonl); `--report` prints the
mean per tag and set of everything in it. Data come from the same cache as ucr.sh.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ucr  # noqa: E402  (the cache and the panel of benchmarks/ucr.py)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "ucr-screen.jsonl"


def holdout_score(train_file: Path, params: dict, seed: int) -> dict:
    """Fit on 70% of train_file, score the other 30% (see the module docstring)."""
    from sklearn.model_selection import train_test_split

    from s5ssm import S5Classifier, S5Regressor
    from s5ssm.data import load_file

    dataset, info = load_file(train_file)
    X = [x.T for x in dataset.inputs]  # (n_channels, n_timepoints) per case
    classify = info["kind"] == "classification"
    y = dataset.targets if classify else dataset.targets[:, 0]
    fit_idx, score_idx = train_test_split(np.arange(len(X)), test_size=0.3, random_state=seed,
                                          stratify=y if classify else None)  # fmt: skip
    estimator = (S5Classifier if classify else S5Regressor)(random_state=seed, **params)
    start = time.perf_counter()
    estimator.fit([X[i] for i in fit_idx], y[fit_idx])
    predicted = estimator.predict([X[i] for i in score_idx])
    truth = y[score_idx]
    score = float((predicted == truth).mean()) if classify else float(((predicted - truth) ** 2).mean() / truth.var())
    return {"score": score, "metric": "accuracy" if classify else "relative_mse",
            "seconds": round(time.perf_counter() - start, 1), "best_epoch": estimator.best_epoch_,
            "epochs": estimator.config_["epochs"]}  # fmt: skip


def report(path: Path) -> str:
    """Mean score per tag and set (and the number of seeds) of every line in path."""
    rows: dict[str, dict[str, list[float]]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        rows.setdefault(entry["tag"], {}).setdefault(entry["set"], []).append(entry["score"])
    sets = sorted({name for by_set in rows.values() for name in by_set})
    lines = ["| tag | " + " | ".join(sets) + " |", "| --- |" + " --- |" * len(sets)]
    for tag, by_set in rows.items():
        cells = [f"{statistics.mean(by_set[s]):.3f} ({len(by_set[s])})" if s in by_set else "" for s in sets]
        lines.append(f"| {tag} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", help="name of this setting in the results")
    parser.add_argument("--params", default="{}", help="estimator parameters as JSON (others: the defaults)")
    parser.add_argument("--sets", nargs="+", default=ucr.PANEL)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--cache", type=Path, default=ucr.default_cache())
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true", help="print the table of --out and stop")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.out))
        return 0
    if not args.tag:
        parser.error("--tag is required (unless --report)")
    params = json.loads(args.params)
    if not isinstance(params, dict):
        parser.error("--params must be a JSON object")
    ucr.extract_sets(args.cache, args.sets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for name in args.sets:
            train_file, _ = ucr.set_files(args.cache, name)
            entry = {"tag": args.tag, "set": name, "seed": seed, "params": params, "commit": ucr.git_commit(),
                     **holdout_score(train_file, params, seed)}  # fmt: skip
            print(json.dumps(entry), flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(entry) + "\n")
    print(report(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
