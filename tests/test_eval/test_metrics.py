"""Metrics against scikit-learn on fixed inputs; the bootstrap interval's coverage on a synthetic case."""

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from crema_fast.eval.errors import MetricError
from crema_fast.eval.metrics import (auroc, average_precision, best_f1_thresholds, bootstrap_macro_auroc,
                                     evaluate, f1_at)


def _fixed(n=257, C=4, seed=1, decimals=1):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, C)) < np.linspace(0.1, 0.5, C)).astype(int)
    s = np.round(rng.normal(size=(n, C)) + 0.8 * y, decimals)  # rounding: many ties
    return y, s


@pytest.mark.parametrize("decimals", [0, 1, 6])
def test_auroc_and_ap_match_sklearn(decimals):
    y, s = _fixed(decimals=decimals)
    want_auc = [roc_auc_score(y[:, j], s[:, j]) for j in range(y.shape[1])]
    want_ap = [average_precision_score(y[:, j], s[:, j]) for j in range(y.shape[1])]
    np.testing.assert_allclose(auroc(y, s), want_auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(average_precision(y, s), want_ap, rtol=0, atol=1e-12)


def test_tiny_hand_case():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert auroc(y, s)[0] == pytest.approx(0.75)
    assert average_precision(y, s)[0] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))


def test_f1_thresholds_are_the_best_on_validation():
    y, s = _fixed(seed=2)
    thr = best_f1_thresholds(y, s)
    for j in range(y.shape[1]):
        best = max(f1_score(y[:, j], s[:, j] >= t) for t in np.unique(s[:, j]))
        assert f1_score(y[:, j], s[:, j] >= thr[j]) == pytest.approx(best)
    np.testing.assert_allclose(f1_at(y, s, thr), [f1_score(y[:, j], s[:, j] >= thr[j]) for j in range(4)])


def test_evaluate_fields():
    y, s = _fixed()
    yv, sv = _fixed(seed=5)
    r = evaluate(y, s, y_val=yv, scores_val=sv, n_boot=200, seed=0, classes=["A", "B", "C", "D"])
    assert r["macro_auroc"] == pytest.approx(np.mean([roc_auc_score(y[:, j], s[:, j]) for j in range(4)]))
    lo, hi = r["macro_auroc_ci"]
    assert lo < r["macro_auroc"] < hi
    assert set(r["per_class_auroc"]) == {"A", "B", "C", "D"} and r["positives"]["A"] == int(y[:, 0].sum())
    assert r["macro_f1"] is not None and set(r["thresholds"]) == {"A", "B", "C", "D"}
    assert evaluate(y, s, n_boot=200, seed=0) == evaluate(y, s, n_boot=200, seed=0)  # seeded
    assert evaluate(y, s, n_boot=0)["macro_f1"] is None


def test_weighted_bootstrap_equals_resampling():
    # A resample's AUROC through count weights equals sklearn's on the resampled rows.
    y, s = _fixed(n=60, C=2)
    boots, rejected = bootstrap_macro_auroc(y, s, n_boot=20, seed=7)
    idx = np.random.default_rng(7).integers(0, 60, size=(20, 60))  # the first chunk's draws
    valid = [i for i in idx if all(0 < y[i, j].sum() < 60 for j in range(2))]
    assert valid and 20 - len(valid) <= rejected  # rejected draws are drawn again
    want = [np.mean([roc_auc_score(y[i, j], s[i, j]) for j in range(2)]) for i in valid]
    np.testing.assert_allclose(boots[:len(valid)], want, rtol=0, atol=1e-12)


def test_bootstrap_interval_coverage():
    # Negatives ~ N(0, 1), positives ~ N(d, 1): the true AUROC is Phi(d / sqrt(2)) in each class.
    d, n, reps = 1.0, 150, 600
    true = 0.5 * (1 + math.erf(d / math.sqrt(2) / math.sqrt(2)))
    rng = np.random.default_rng(0)
    inside = 0
    for r in range(reps):
        y = (rng.random((n, 2)) < 0.4).astype(int)
        s = rng.normal(size=(n, 2)) + d * y
        lo, hi = evaluate(y, s, n_boot=400, seed=r)["macro_auroc_ci"]
        inside += lo <= true <= hi
    assert 0.88 <= inside / reps <= 0.99, inside / reps


def test_empty_class_is_one_line():
    y, s = _fixed()
    y[:, 2] = 0
    with pytest.raises(MetricError, match="class 'C' has no positives in the test split") as info:
        evaluate(y, s, classes=["A", "B", "C", "D"])
    assert "\n" not in str(info.value)
    y[:, 2] = 1
    yv, sv = _fixed(seed=3)
    yv[:, 1] = 1
    with pytest.raises(MetricError, match="class 'B' has no negatives in the val split"):
        evaluate(_fixed()[0], s, y_val=yv, scores_val=sv, classes=["A", "B", "C", "D"])
