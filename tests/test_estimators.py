"""S5Classifier / S5Regressor: scikit-learn's estimator checks, the aeon input layouts,
labels returned as given, save/load without pickle, cross_val_score and Pipeline."""

import json

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import parametrize_with_checks

from s5ssm import S5Classifier, S5Regressor

TINY = dict(epochs=2, hidden_size=8, state_size=8, num_layers=1, batch_size=8)
# checks that do not apply to time series, or to two epochs of training
NOT_APPLICABLE = {
    # a 2-D X is (n_cases, n_timepoints) of one channel here, as in aeon: its columns are
    # time points, not features, and a series of another length is valid input
    "check_n_features_in_after_fitting": "columns of a 2-D X are time points (aeon's layout), not features",
    "check_n_features_in": "columns of a 2-D X are time points (aeon's layout), not features",
    # accuracy/R^2 thresholds on blobs need more than the two epochs the suite can afford
    "check_classifiers_train": "two epochs in the test suite; the thresholds need a trained model",
    "check_regressors_train": "two epochs in the test suite; the thresholds need a trained model",
}


@parametrize_with_checks([S5Classifier(**TINY), S5Regressor(**TINY)], expected_failed_checks=lambda e: NOT_APPLICABLE)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def _series(n, rng, channels=2, lengths=None):
    """Cases whose label is the sign of their drift: (n_channels, n_timepoints_i) each."""
    labels = np.where(rng.random(n) < 0.5, "up", "down")
    cases = []
    for i, label in enumerate(labels):
        length = 30 if lengths is None else lengths[i]
        steps = rng.random((channels, length)) * (1.0 if label == "up" else -1.0)
        cases.append(np.cumsum(steps, axis=1) + 100.0)
    return cases, labels


def test_classifier_on_the_aeon_layout_returns_labels_as_given():
    rng = np.random.default_rng(0)
    cases, labels = _series(48, rng)
    X = np.stack(cases)  # (n_cases, n_channels, n_timepoints)
    clf = S5Classifier(epochs=15, hidden_size=16, state_size=8, num_layers=1, options={"norm": "layer"},
                       ssm_lr=5e-3).fit(X, labels)  # fmt: skip
    assert list(clf.classes_) == ["down", "up"]
    predicted = clf.predict(X)
    assert predicted.dtype.kind == "U" and set(predicted) <= {"up", "down"}
    probs = clf.predict_proba(X)
    assert probs.shape == (48, 2) and np.allclose(probs.sum(1), 1.0)
    assert clf.score(X, labels) > 0.8  # an easy task: learnt, not guessed


def test_unequal_lengths_as_a_list_nothing_cut():
    rng = np.random.default_rng(1)
    lengths = rng.integers(5, 40, size=30)
    cases, labels = _series(30, rng, channels=1, lengths=lengths)
    clf = S5Classifier(**TINY).fit(cases, labels)
    assert clf.predict(cases).shape == (30,)
    # a case longer than every training case is fine (no window)
    long_case = np.cumsum(rng.random((1, 80)), axis=1)
    assert clf.predict([long_case])[0] in ("up", "down")
    with pytest.raises(ValueError, match="3 channels"):
        clf.predict([np.zeros((3, 10))])


def test_integer_and_boolean_labels_and_many_classes_on_a_tiny_set():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 1, 12))
    labels = np.repeat(np.arange(10) * 7 + 3, 5)  # N=50, 10 classes (PickupGestureWiimoteZ's shape)
    clf = S5Classifier(**TINY).fit(X, labels)
    assert set(clf.predict(X)) <= set(labels.tolist()) and clf.classes_.tolist() == sorted(set(labels.tolist()))
    clf = S5Classifier(**TINY).fit(X[:20], np.repeat([True, False], 10))
    assert clf.predict(X[:5]).dtype == bool


def test_save_and_load_without_pickle(tmp_path):
    rng = np.random.default_rng(3)
    cases, labels = _series(24, rng)
    clf = S5Classifier(**TINY).fit(np.stack(cases), labels)
    clf.save(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["estimator.json", "model.safetensors"]
    json.loads((tmp_path / "clf" / "estimator.json").read_text())  # plain JSON
    loaded = S5Classifier.load(tmp_path / "clf")
    np.testing.assert_array_equal(loaded.predict_proba(np.stack(cases)), clf.predict_proba(np.stack(cases)))
    assert loaded.predict(np.stack(cases)).tolist() == clf.predict(np.stack(cases)).tolist()
    assert loaded.get_params() == {**clf.get_params(), "run_dir": None}
    with pytest.raises(ValueError, match="S5Regressor"):
        S5Regressor.load(tmp_path / "clf")
    with pytest.raises(FileNotFoundError, match="estimator.json"):
        S5Classifier.load(tmp_path)


def test_regressor_predicts_in_the_targets_units_and_round_trips(tmp_path):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 2, 16))
    y = 0.02 + 0.001 * X[:, 0].mean(1)  # tiny targets far from 0 (like Covid3Month)
    reg = S5Regressor(**TINY).fit(X, y)
    predicted = reg.predict(X)
    assert predicted.shape == (40,) and abs(predicted.mean() - 0.02) < 0.005
    reg.save(tmp_path / "reg")
    np.testing.assert_array_equal(S5Regressor.load(tmp_path / "reg").predict(X), predicted)
    two = S5Regressor(**TINY).fit(X, np.stack([y, 1000 + y], 1))
    assert two.predict(X).shape == (40, 2) and abs(two.predict(X)[:, 1].mean() - 1000) < 5


def test_clone_cross_val_score_and_pipeline():
    rng = np.random.default_rng(5)
    cases, labels = _series(24, rng)
    X = np.stack(cases)
    clf = S5Classifier(**TINY, options={"norm": "layer"})
    assert clone(clf).get_params() == clf.get_params()
    scores = cross_val_score(clf, X, labels, cv=2, error_score="raise")
    assert scores.shape == (2,) and np.all((0 <= scores) & (scores <= 1))
    pipe = make_pipeline(FunctionTransformer(lambda a: a - a.mean(axis=2, keepdims=True)), clone(clf))
    assert pipe.fit(X, labels).predict(X).shape == (24,)


@pytest.mark.parametrize(
    "params, match",
    [({"options": {"no_such_option": 1}}, "no_such_option"), ({"options": {"data": "x.ts"}}, "data"),
     ({"random_state": -1}, "random_state"), ({"epochs": 0}, "epochs")],  # fmt: skip
)
def test_bad_parameters_are_named(params, match):
    X = np.random.default_rng(6).standard_normal((10, 1, 8))
    with pytest.raises(ValueError, match=match):
        S5Classifier(**{**TINY, **params}).fit(X, np.arange(10) % 2)
