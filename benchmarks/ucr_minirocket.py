"""The MiniRocket anchor of benchmarks/ucr.py, run inside the aeon venv (not s5ssm's).

    python ucr_minirocket.py TRAIN.ts TEST.ts classification|regression

Fits aeon's MiniRocketClassifier(random_state=0) or MiniRocketRegressor(random_state=0)
on TRAIN, predicts TEST and prints one JSON object on stdout:
    {"status": "ok", "metric": "accuracy"|"mse", "value": float, "seconds": fit+predict,
     "first_run_seconds": fit+predict of the first run}
or, when aeon refuses the data (unequal lengths, for one),
    {"status": "cannot (unequal lengths)" | "failed", "error": aeon's message}.
It fits twice: the first run compiles numba's kernels (tens of seconds even on a small
set, a one-off cost), so "seconds" times the second, identical fit+predict.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from aeon.classification.convolution_based import MiniRocketClassifier
from aeon.datasets import load_from_ts_file
from aeon.regression.convolution_based import MiniRocketRegressor

TASKS = {"classification": (MiniRocketClassifier, "accuracy"), "regression": (MiniRocketRegressor, "mse")}


def unequal_lengths(X) -> bool:
    """aeon gives a list of (n_channels, n_timepoints_i) arrays when the cases' lengths differ."""
    return isinstance(X, list) and len({case.shape[-1] for case in X}) > 1


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Accuracy (labels as aeon reads them) or mean squared error (float targets)."""
    if metric == "accuracy":
        return float(np.mean(y_pred == y_true))
    return float(np.mean((y_pred.astype(float) - y_true.astype(float)) ** 2))


def run(train_path: str, test_path: str, task: str) -> dict:
    """Fit on train, score on test; aeon's refusal becomes a status instead of a traceback."""
    estimator_cls, metric = TASKS[task]
    X_train, y_train = load_from_ts_file(train_path)
    X_test, y_test = load_from_ts_file(test_path)
    try:
        first_seconds, _ = fit_predict(estimator_cls, X_train, y_train, X_test)  # compiles numba's kernels
    except ValueError as exc:
        unequal = unequal_lengths(X_train) or unequal_lengths(X_test)
        return {"status": "cannot (unequal lengths)" if unequal else "failed", "metric": metric, "error": str(exc)}
    seconds, y_pred = fit_predict(estimator_cls, X_train, y_train, X_test)
    return {"status": "ok", "metric": metric, "value": score(metric, y_test, y_pred), "seconds": round(seconds, 2),
            "first_run_seconds": round(first_seconds, 2)}  # fmt: skip


def fit_predict(estimator_cls, X_train, y_train, X_test) -> tuple[float, np.ndarray]:
    """(seconds of fit + predict, predictions) of a fresh estimator with random_state=0."""
    estimator = estimator_cls(random_state=0)
    start = time.perf_counter()
    estimator.fit(X_train, y_train)
    y_pred = estimator.predict(X_test)
    return time.perf_counter() - start, y_pred


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in TASKS:
        print(f"usage: ucr_minirocket.py TRAIN.ts TEST.ts {'|'.join(TASKS)}; got {argv}", file=sys.stderr)
        return 2
    print(json.dumps(run(*argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
