"""The linear probe: standardized features, one logistic regression per class (one-vs-rest, as
scikit-learn's OneVsRestClassifier does for multi-label targets), L2 strength C chosen on the
validation split by macro AUROC.

Standardization uses the training rows' mean and standard deviation (a constant feature is left
centred, not divided by zero). Each (class, C) is fitted with L-BFGS on the training rows only; the C
with the best validation macro AUROC wins (ties: the smaller C, the stronger regularization), and its
training fits are kept (no refit on train + val, so the validation rows stay untouched by the weights).
Scores are the logits (decision function): AUROC, AP and validation thresholds need only their order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from crema_fast.eval.errors import EvalError, SplitError
from crema_fast.eval.metrics import check_classes, macro_auroc

DEFAULT_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


@dataclass(frozen=True)
class Probe:
    """A fitted probe: mean, scale float64 (D,); coef float64 (C, D) and intercept (C,) on standardized
    features; C: the chosen regularization; val_auroc: {C: validation macro AUROC} of every C tried."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    C: float
    val_auroc: dict = field(default_factory=dict)

    def predict_scores(self, x) -> np.ndarray:
        """Logits float64 (N, C) of features x (N, D)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise EvalError(f"probe: x: expected (N, {self.mean.shape[0]}), got {x.shape}")
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept


def _fit_one(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        # a weakly regularized fit on separable data stops at max_iter; its scores still rank
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    return clf.coef_[0].copy(), float(clf.intercept_[0])


def fit_probe(x_train, y_train, x_val, y_val, *, Cs=DEFAULT_CS, classes=None, max_iter: int = 1000,
              seed: int = 0) -> Probe:
    """Fit the probe on x_train (N, D), y_train 0/1 (N, C); choose C on (x_val, y_val) by macro AUROC.
    Every class needs positives and negatives in both splits (MetricError naming the class otherwise)."""
    xt = np.asarray(x_train, dtype=np.float64)
    xv = np.asarray(x_val, dtype=np.float64)
    yt = np.asarray(y_train)
    yv = np.asarray(y_val)
    if yt.ndim == 1:
        yt, yv = yt[:, None], yv[:, None]
    if xt.ndim != 2 or xv.ndim != 2 or xt.shape[1] != xv.shape[1] or len(xt) != len(yt) or len(xv) != len(yv):
        raise EvalError(f"fit_probe: expected x_train (N, D), y_train (N, C), x_val (M, D), y_val (M, C); got "
                        f"{xt.shape}, {yt.shape}, {xv.shape}, {yv.shape}")
    if not len(Cs) or any(not c > 0 for c in Cs):
        raise EvalError(f"fit_probe: Cs: expected positive values, got {tuple(Cs)}")
    check_classes(yt, "train", classes)
    check_classes(yv, "val", classes)
    mean = xt.mean(axis=0)
    scale = xt.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    zt, zv = (xt - mean) / scale, (xv - mean) / scale
    best = None
    curve = {}
    for C in sorted(float(c) for c in Cs):
        fits = [_fit_one(zt, yt[:, j].astype(int), C, max_iter, seed) for j in range(yt.shape[1])]
        coef = np.stack([f[0] for f in fits])
        intercept = np.array([f[1] for f in fits])
        auc = macro_auroc(yv, zv @ coef.T + intercept, split="val", classes=classes)
        curve[C] = auc
        if best is None or auc > best[0]:
            best = (auc, C, coef, intercept)
    _, C, coef, intercept = best
    return Probe(mean=mean, scale=scale, coef=coef, intercept=intercept, C=C, val_auroc=curve)


@dataclass(frozen=True)
class ProbeResult:
    """What ``probe_table`` produced: metrics (``metrics.evaluate`` on the test split), the fitted probe,
    the split's positions into the table and its one-line name, y_test (N, C) and scores_test (N, C)
    (for the ROC plot)."""

    metrics: dict
    probe: Probe
    parts: dict
    y_test: np.ndarray
    scores_test: np.ndarray
    split: str = ""


def align(emb_record_ids: np.ndarray, emb: np.ndarray, table, store_rows: int | None = None) -> np.ndarray:
    """The embedding of each labelled row: emb (R, D) row r = store row r -> (N, D) in table order.
    EvalError when the embeddings were not made from the table's store (row count ``store_rows`` when
    given, record ids)."""
    if store_rows is not None and len(emb) != store_rows:
        raise EvalError(f"embeddings: {len(emb)} rows, but the store has {store_rows}: expected embeddings of "
                        f"the same store (crema-fast embed STORE)")
    if len(emb) <= int(table.rows.max()):
        raise EvalError(f"embeddings: {len(emb)} rows, but the labels name store row {int(table.rows.max())}: "
                        f"expected embeddings of the same store (crema-fast embed STORE)")
    got = np.asarray(emb_record_ids)[table.rows].astype(str)
    bad = np.flatnonzero(got != np.asarray(table.record_ids).astype(str))
    if len(bad):
        i = int(bad[0])
        raise EvalError(f"embeddings: store row {int(table.rows[i])} is record {got[i]!r} in the embeddings but "
                        f"{table.record_ids[i]!r} in the store: expected embeddings of the same store")
    return np.asarray(emb)[table.rows]


def probe_table(x: np.ndarray, table, *, split_by: str = "auto", seed: int = 0, val_frac: float = 0.1,
                test_frac: float = 0.1, Cs=DEFAULT_CS, n_boot: int = 1000) -> ProbeResult:
    """Split the table's rows, fit the probe on train, choose C on val, evaluate on test.

    x: float (N, D) features in table order (``align``); split_by: "auto" (strat_fold, else patients),
    "patient" (ignore folds) or "record" (each record its own group: for sources without patient ids).
    """
    from crema_fast.eval.metrics import evaluate
    from crema_fast.eval.splits import describe_split, split_rows

    if split_by not in ("auto", "patient", "record"):
        raise EvalError(f"split_by: expected 'auto', 'patient' or 'record', got {split_by!r}")
    folds = table.strat_fold if split_by == "auto" else None
    patients = table.record_ids if split_by == "record" else table.patient_id
    if split_by == "patient" and patients is None:
        raise SplitError("split by patient: the store has no patient_id (converted before patient ids were "
                         "kept: reconvert it), or split by record (--split record)")
    parts = split_rows(len(table), folds=folds, patient_ids=patients, seed=seed, val_frac=val_frac,
                       test_frac=test_frac)
    split = describe_split(len(table), folds=folds, patient_ids=patients, seed=seed, val_frac=val_frac,
                           test_frac=test_frac)
    if split_by == "record":
        split = split.replace("patient-disjoint", "record-disjoint (records of one patient may fall in two parts)")
    y, classes = table.y, list(table.classes)
    for name in ("train", "val", "test"):  # before any fitting: the one-line error names class and split
        check_classes(y[parts[name]], name, classes)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    probe = fit_probe(x[tr], y[tr], x[va], y[va], Cs=Cs, classes=classes, seed=seed)
    s_te, s_va = probe.predict_scores(x[te]), probe.predict_scores(x[va])
    metrics = evaluate(y[te], s_te, y_val=y[va], scores_val=s_va, n_boot=n_boot, seed=seed, classes=classes)
    return ProbeResult(metrics=metrics, probe=probe, parts=parts, y_test=y[te], scores_test=s_te, split=split)
