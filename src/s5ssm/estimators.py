"""scikit-learn estimators: S5Classifier and S5Regressor, thin over s5ssm.training.

    >>> from s5ssm import S5Classifier
    >>> clf = S5Classifier().fit(X_train, y_train)          # doctest: +SKIP
    >>> clf.predict(X_test), clf.score(X_test, y_test)      # doctest: +SKIP

Inputs X as aeon and sktime take them: a float array (n_cases, n_channels, n_timepoints),
a list of (n_channels, n_timepoints_i) arrays for unequal lengths (nothing is cut: the
batches are padded and masked), or (n_cases, n_timepoints) for one channel. Classifier
labels may be of any type numpy can sort; `predict` returns them as given (`classes_`).
Regression targets are (n_cases,) or (n_cases, n_targets).

`fit` is `s5ssm train`: the same trainer, the settings `s5ssm train --data` fits to the
data (s5ssm.fitted_defaults) for every parameter left at None, a validation split held out
of X for early stopping, and the best checkpoint kept. It trains in a temporary run
directory, or in `run_dir` when given (then `s5ssm eval` / the run's files stay).
`save(directory)` / `load(directory)` use JSON and safetensors only (no pickle).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from . import checkpoint, fitted_defaults, settings
from .data import SequenceDataset, collate, dataset_info
from .io import atomic_write_text, load_safetensors, save_safetensors
from .options import ALL_DEFAULTS
from .training.build import build_model
from .training.data import holdout
from .training.loop import train

__all__ = ["S5Classifier", "S5Regressor"]

CONFIG_NAME = "estimator.json"
WEIGHTS_NAME = "model.safetensors"
# the parameters every estimator takes; None leaves the choice to fitted_defaults / the trainer
TUNABLE = ("epochs", "batch_size", "hidden_size", "state_size", "num_layers", "dropout", "bidirectional", "pooling",
           "ssm_lr", "weight_decay", "patience", "val_fraction", "standardize", "augment")  # fmt: skip


def as_sequences(X, name: str = "X") -> list[np.ndarray]:
    """X in the aeon layout -> a list of float32 (n_timepoints_i, n_channels) arrays.

    Accepts (n_cases, n_channels, n_timepoints), (n_cases, n_timepoints) (one channel), or
    a list/tuple of (n_channels, n_timepoints_i) or (n_timepoints_i,) arrays. Checked
    with scikit-learn's check_array (no sparse, complex, object, NaN or Inf values).
    """
    if X is None:
        raise ValueError(f"{name}: expected an array of time series, got None")
    if isinstance(X, (list, tuple)) and X and all(np.ndim(x) in (1, 2) and np.ndim(x) == np.ndim(X[0]) for x in X):
        if np.ndim(X[0]) == 2 or len({len(x) for x in X}) > 1:  # unequal lengths, or cases with channels
            return [_case(x, f"{name}[{i}]") for i, x in enumerate(X)]
    array = check_array(X, allow_nd=True, dtype=np.float32, ensure_min_samples=1, input_name=name)
    if array.ndim == 2:
        array = array[:, None, :]
    if array.ndim != 3:
        raise ValueError(f"{name}: expected (n_cases, n_channels, n_timepoints) or a list of (n_channels, "
                         f"n_timepoints_i) arrays, got shape {array.shape}")  # fmt: skip
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"{name}: 0 feature(s) (shape={array.shape}) while a minimum of 1 is required: "
                         "no channels or no time points")  # fmt: skip
    return [np.ascontiguousarray(case.T) for case in array]


def _case(case, name: str) -> np.ndarray:
    """One case (n_channels, n_timepoints) or (n_timepoints,) -> float32 (n_timepoints, n_channels)."""
    array = check_array(case, ensure_2d=False, dtype=np.float32, ensure_min_samples=1, input_name=name)
    array = array[None, :] if array.ndim == 1 else array
    if array.shape[1] == 0:
        raise ValueError(f"{name}: no time points")
    return np.ascontiguousarray(array.T)


class _S5Estimator(BaseEstimator):
    """What S5Classifier and S5Regressor share: the parameters, fit, the forward pass, files."""

    _kind = ""  # "classification" | "regression"

    def __init__(self, *, epochs=None, batch_size=None, hidden_size=None, state_size=None, num_layers=None,
                 dropout=None, bidirectional=None, pooling=None, ssm_lr=None, weight_decay=None, patience=None,
                 val_fraction=None, standardize=None, augment=None, options=None, random_state=0, device="cpu",
                 run_dir=None, verbose=False):  # fmt: skip
        self.epochs = epochs
        self.batch_size = batch_size
        self.hidden_size = hidden_size
        self.state_size = state_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.bidirectional = bidirectional
        self.pooling = pooling
        self.ssm_lr = ssm_lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.val_fraction = val_fraction
        self.standardize = standardize
        self.augment = augment
        self.options = options
        self.random_state = random_state
        self.device = device
        self.run_dir = run_dir
        self.verbose = verbose

    # ------------------------------------------------------------------ settings
    def _given(self) -> dict:
        """The settings set on this estimator (parameters not None, then `options`)."""
        given = {name: getattr(self, name) for name in TUNABLE if getattr(self, name) is not None}
        options = dict(self.options or {})
        unknown = sorted(set(options) - set(ALL_DEFAULTS))
        if unknown:
            raise ValueError(f"options: unknown option(s) {unknown}; see `s5ssm train --help` for the names")
        fixed = {"task", "data", "test_data", "quiet", "device"} & set(options)
        if fixed:
            raise ValueError(f"options: {sorted(fixed)} cannot be set here (the estimator's own parameters hold them)")
        seed = self.random_state if self.random_state is not None else 0
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"random_state must be a non-negative int (a RandomState is not supported), got {seed!r}")
        return {**options, **given, "seed": int(seed), "device": self.device}

    # ------------------------------------------------------------------ fit
    def _targets(self, y, n: int) -> np.ndarray:
        raise NotImplementedError

    def fit(self, X, y) -> "_S5Estimator":
        """Train on X (see the module docstring) and y; returns self."""
        inputs = as_sequences(X)
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if len(inputs) < 2:
            raise ValueError(f"X: cannot fit on 1 sample (n_samples = 1): a validation split needs at least 2")
        targets = self._targets(y, len(inputs))
        dataset = SequenceDataset(inputs, targets)
        info = dataset_info(dataset, class_names=[str(c) for c in getattr(self, "classes_", [])] or None)
        given = self._given()
        cfg = {**ALL_DEFAULTS, **given, "quiet": not self.verbose}
        data = holdout(dataset, info, cfg)
        log = print if self.verbose else (lambda *_: None)
        cfg = fitted_defaults.apply(cfg, given, data, log)
        settings.validate(cfg, ALL_DEFAULTS)
        with tempfile.TemporaryDirectory(prefix="s5ssm-") as scratch:
            run_dir = Path(self.run_dir) if self.run_dir is not None else Path(scratch) / "run"
            summary = train(cfg, run_dir, log=log, data=data, extras=self.run_dir is not None)
            model = build_model(cfg, data.info)
            model.load_state_dict(checkpoint.load(run_dir / "checkpoints", "best")["model"])
        self.model_, self.config_, self.info_ = model.eval(), cfg, data.info
        self.n_features_in_ = int(inputs[0].shape[1])
        self.best_epoch_, self.validation_ = summary["best_epoch"], summary["results"]["val"]
        return self

    # ------------------------------------------------------------------ predict
    @torch.no_grad()
    def _forward(self, X) -> np.ndarray:
        """The model's outputs for X: logits (n, classes) or predictions (n, targets)."""
        check_is_fitted(self, "model_")
        inputs = as_sequences(X)
        if inputs[0].shape[1] != self.n_features_in_:
            raise ValueError(f"X: has {inputs[0].shape[1]} channels, the estimator was fitted on {self.n_features_in_}")
        dataset = SequenceDataset(inputs, np.zeros(len(inputs), np.int64))
        device = torch.device(self.device)
        model = self.model_.to(device).eval()
        outputs = []
        batch_size = int(self.config_["batch_size"])
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(len(dataset), start + batch_size))])
            outputs.append(model(batch["x"].to(device), mask=batch["mask"].to(device)).double().cpu().numpy())
        return np.concatenate(outputs)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        """Write estimator.json (parameters, fitted settings, classes) and model.safetensors."""
        check_is_fitted(self, "model_")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = {k: v for k, v in self.get_params().items() if k != "run_dir"}
        state = {"estimator": type(self).__name__, "params": params, "config": self.config_, "info": self.info_,
                 "n_features_in": self.n_features_in_, "best_epoch": self.best_epoch_,
                 "validation": self.validation_, **self._fitted_state()}  # fmt: skip
        try:
            text = json.dumps(state, indent=2, sort_keys=True)
        except TypeError as exc:
            raise ValueError(f"save: {exc} (labels and parameters must be str, int, float or bool)") from None
        save_safetensors(self.model_.state_dict(), directory / WEIGHTS_NAME)
        atomic_write_text(directory / CONFIG_NAME, text)

    def _fitted_state(self) -> dict:
        return {}

    @classmethod
    def load(cls, directory: str | Path) -> "_S5Estimator":
        """An estimator saved by `save`, ready to predict (no pickle involved)."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (not a directory written by {cls.__name__}.save)")
        try:
            state = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(state, dict) or state.get("estimator") != cls.__name__:
            raise ValueError(f"{path}: holds a {state.get('estimator') if isinstance(state, dict) else '?'}, "
                             f"not a {cls.__name__}")  # fmt: skip
        estimator = cls(**state["params"])
        model = build_model(state["config"], state["info"])
        model.load_state_dict(load_safetensors(Path(directory) / WEIGHTS_NAME))
        estimator.model_, estimator.config_, estimator.info_ = model.eval(), state["config"], state["info"]
        estimator.n_features_in_, estimator.best_epoch_ = state["n_features_in"], state["best_epoch"]
        estimator.validation_ = state["validation"]
        estimator._restore(state)
        return estimator

    def _restore(self, state: dict) -> None:
        pass

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        tags.input_tags.allow_nan = False
        return tags


class S5Classifier(ClassifierMixin, _S5Estimator):
    """An S5 classifier of whole sequences (see the module docstring for X and the parameters).

    Parameters left at None take the value `s5ssm train --data` fits to the data;
    `options` passes any other `s5ssm train` option by name (e.g. {"norm": "layer"}).

    Attributes after fit: classes_ (the labels, sorted), model_ (the S5Model), config_ (every
    setting used), best_epoch_, validation_ (the validation split's accuracy and loss).
    """

    _kind = "classification"

    def _targets(self, y, n: int) -> np.ndarray:
        labels = column_or_1d(y, warn=True)
        check_classification_targets(labels)
        if labels.shape[0] != n:
            raise ValueError(f"y: expected {n} labels (one per case), got {labels.shape[0]}")
        try:
            self.classes_, index = np.unique(labels, return_inverse=True)
        except TypeError as exc:
            raise ValueError(f"y: labels must be sortable (one type): {exc}") from None
        if len(self.classes_) < 2:
            raise ValueError("y: only 1 class (one class) in the labels; a classifier needs at least 2")
        return index.astype(np.int64)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_cases, n_classes), columns in the order of classes_."""
        logits = self._forward(X)
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """The most probable label of each case, as given to fit (n_cases,)."""
        index = self._forward(X).argmax(axis=1)
        return self.classes_[index]

    def _fitted_state(self) -> dict:
        return {"classes": [c.item() if isinstance(c, np.generic) else c for c in self.classes_]}

    def _restore(self, state: dict) -> None:
        self.classes_ = np.array(state["classes"])


class S5Regressor(RegressorMixin, _S5Estimator):
    """An S5 regressor of whole sequences (see the module docstring for X and the parameters).

    Targets are standardised for training (on by default) and predictions come back in the
    targets' units. Attributes after fit as S5Classifier's, without classes_.
    """

    _kind = "regression"

    def _targets(self, y, n: int) -> np.ndarray:
        targets = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y")
        if targets.ndim not in (1, 2) or targets.shape[0] != n:
            raise ValueError(f"y: expected (n_cases,) or (n_cases, n_targets) with n_cases={n}, got shape {targets.shape}")
        self._single_target = targets.ndim == 1
        return targets.astype(np.float32)

    def predict(self, X) -> np.ndarray:
        """Predictions in the targets' units: (n_cases,) if fitted on (n_cases,) targets."""
        out = self._forward(X)
        return out[:, 0] if self._single_target else out

    def _fitted_state(self) -> dict:
        return {"single_target": self._single_target}

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _restore(self, state: dict) -> None:
        self._single_target = bool(state["single_target"])
