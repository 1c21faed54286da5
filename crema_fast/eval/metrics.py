"""Multi-label metrics in numpy: AUROC (rank-based), average precision, F1 at validation thresholds,
and a seeded bootstrap 95% interval of the macro AUROC.

AUROC is the Mann-Whitney statistic: the probability that a positive outscores a negative, ties
counted one half (scikit-learn's ``roc_auc_score``, equal to it on the tests' inputs). Average
precision is scikit-learn's: sum over distinct thresholds of (R_n - R_{n-1}) P_n, no interpolation.
The bootstrap resamples rows with replacement (each resample as a vector of counts: the per-class
sort is done once, so 1000 resamples cost about one sort per class plus (1000, N) sums) and, as the
PTB-XL benchmark does, draws again any resample in which a class has no positive or no negative;
the interval is the 2.5th and 97.5th percentile of the resamples' macro AUROC.
"""

from __future__ import annotations

import numpy as np

from crema_fast.eval.errors import MetricError


def check_classes(y_true, split: str, classes=None) -> list[str]:
    """The class names of y_true 0/1 (N, C); MetricError naming the first class that has no positives
    or no negatives in ``split``."""
    y = np.asarray(y_true)
    y = y[:, None] if y.ndim == 1 else y
    names = list(classes) if classes is not None else [str(j) for j in range(y.shape[1])]
    if len(names) != y.shape[1]:
        raise MetricError(f"{split}: classes: expected {y.shape[1]} names, got {len(names)}")
    pos = y.sum(axis=0)
    for j, name in enumerate(names):
        if pos[j] == 0 or pos[j] == len(y):
            what = "no positives" if pos[j] == 0 else "no negatives"
            raise MetricError(f"class {name!r} has {what} in the {split} split ({len(y)} rows): AUROC is "
                              f"undefined; drop the class (--min-count) or use a larger split")
    return names


def _check(y_true, scores, split: str, classes) -> tuple[np.ndarray, np.ndarray, list[str]]:
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape != s.shape or y.ndim != 2:
        raise MetricError(f"{split}: y_true and scores: expected the same (N, C) shape, got {y.shape} and {s.shape}")
    if not np.isin(y, (0, 1)).all():
        raise MetricError(f"{split}: y_true: expected 0/1 values, got {np.unique(y)[:5]}")
    if not np.isfinite(s).all():
        raise MetricError(f"{split}: scores: expected finite values, got {int((~np.isfinite(s)).sum())} non-finite")
    names = check_classes(y, split, classes)
    return y.astype(bool), s, names


def _auroc_weighted(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUROC of one class under row weights. y bool (N,), s (N,), w (R, N) (R weightings) -> (R,).

    Weighted Mann-Whitney: sum over positives of w * (negative weight strictly below + half the
    negative weight tied), over W+ * W-."""
    order = np.argsort(s, kind="mergesort")
    ss, yo, wo = s[order], y[order], w[:, order]
    starts = np.r_[0, np.flatnonzero(ss[1:] != ss[:-1]) + 1]  # first sorted position of each tie group
    neg_g = np.add.reduceat(np.where(yo, 0.0, wo), starts, axis=1)
    pos_g = np.add.reduceat(np.where(yo, wo, 0.0), starts, axis=1)
    below = np.cumsum(neg_g, axis=1) - neg_g  # negative weight strictly below each group
    num = (pos_g * (below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def auroc(y_true, scores, *, classes=None, split: str = "test") -> np.ndarray:
    """Per-class AUROC: y_true 0/1 (N, C) or (N,), scores (N, C) or (N,) -> float64 (C,)."""
    y, s, _ = _check(y_true, scores, split, classes)
    one = np.ones((1, len(y)))
    return np.array([_auroc_weighted(y[:, j], s[:, j], one)[0] for j in range(y.shape[1])])


def macro_auroc(y_true, scores, *, classes=None, split: str = "test") -> float:
    """Mean of the per-class AUROCs."""
    return float(auroc(y_true, scores, classes=classes, split=split).mean())


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
    """One class's ROC curve: y_true 0/1 (N,), scores (N,) -> (fpr, tpr), each (G + 1,) from (0, 0) over
    the G distinct thresholds in decreasing order to (1, 1)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    ss, yy = s[order], y[order]
    last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]
    tp = np.cumsum(yy)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / max(1, (~y).sum())], np.r_[0.0, tp / max(1, y.sum())]


def average_precision(y_true, scores, *, classes=None, split: str = "test") -> np.ndarray:
    """Per-class average precision (scikit-learn's definition): (N, C) -> float64 (C,)."""
    y, s, _ = _check(y_true, scores, split, classes)
    out = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        order = np.argsort(-s[:, j], kind="mergesort")
        ss, yy = s[order, j], y[order, j]
        last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]  # last position of each threshold
        tp = np.cumsum(yy)[last]
        fp = (last + 1) - tp
        precision = tp / (tp + fp)
        recall = tp / yy.sum()
        out[j] = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return out


def best_f1_thresholds(y_val, scores_val, *, classes=None) -> np.ndarray:
    """Per class, the score threshold (predict positive when score >= it) that maximises F1 on the
    validation rows: (N, C) -> float64 (C,). Ties between thresholds go to the highest one."""
    y, s, _ = _check(y_val, scores_val, "val", classes)
    out = np.empty(y.shape[1])
    for j in range(y.shape[1]):
        order = np.argsort(-s[:, j], kind="mergesort")
        ss, yy = s[order, j], y[order, j]
        last = np.r_[np.flatnonzero(ss[1:] != ss[:-1]), len(ss) - 1]
        tp = np.cumsum(yy)[last]
        predicted = last + 1
        f1 = 2 * tp / (predicted + yy.sum())
        out[j] = ss[last[int(np.argmax(f1))]]
    return out


def f1_at(y_true, scores, thresholds) -> np.ndarray:
    """Per-class F1 of ``scores >= thresholds``: (N, C), (C,) -> float64 (C,)."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(scores) >= np.asarray(thresholds)[None, :]
    tp = (pred & y).sum(axis=0)
    denom = pred.sum(axis=0) + y.sum(axis=0)
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def bootstrap_macro_auroc(y_true, scores, *, n_boot: int = 1000, seed: int = 0, classes=None,
                          split: str = "test", max_tries: int = 20) -> tuple[np.ndarray, int]:
    """``n_boot`` macro AUROCs of row resamples (seeded), and how many draws were rejected (a class
    without positives or negatives). (N, C) -> (float64 (n_boot,), int)."""
    y, s, _ = _check(y_true, scores, split, classes)
    n, C = y.shape
    rng = np.random.default_rng(seed)
    yf = y.astype(np.float64)
    boots, rejected, tries = [], 0, 0
    # Chunks of resamples keep the (R, N) count matrix near 16 MB whatever N.
    chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
    while sum(map(len, boots)) < n_boot:
        tries += 1
        if tries > max_tries * (n_boot // chunk + 1):
            raise MetricError(f"{split}: bootstrap: only {sum(map(len, boots))} of {n_boot} resamples hold "
                              f"every class after {rejected} rejected draws; the split is too small for an interval")
        idx = rng.integers(0, n, size=(chunk, n))
        w = np.bincount((np.arange(chunk)[:, None] * n + idx).ravel(), minlength=chunk * n
                        ).reshape(chunk, n).astype(np.float64)
        pos = w @ yf
        ok = ((pos > 0) & (pos < n)).all(axis=1)
        rejected += int((~ok).sum())
        w = w[ok]
        if len(w):
            boots.append(np.stack([_auroc_weighted(y[:, j], s[:, j], w) for j in range(C)], axis=1).mean(axis=1))
    return np.concatenate(boots)[:n_boot], rejected


def evaluate(y_true, scores, *, y_val=None, scores_val=None, n_boot: int = 1000, seed: int = 0,
             classes=None, split: str = "test") -> dict:
    """All metrics of one split. y_true 0/1 (N, C), scores (N, C) (any monotone score: logits or
    probabilities); y_val/scores_val: the validation split, for F1 thresholds (else F1 is None).

    Returns {"n", "classes", "macro_auroc", "macro_auroc_ci" [lo, hi], "n_boot", "boot_rejected",
    "per_class_auroc" {class: v}, "macro_ap", "per_class_ap", "macro_f1", "per_class_f1",
    "thresholds", "positives" {class: n}}."""
    y, s, names = _check(y_true, scores, split, classes)
    per_auc = auroc(y, s, classes=names, split=split)
    per_ap = average_precision(y, s, classes=names, split=split)
    out = {"n": int(len(y)), "classes": names, "macro_auroc": float(per_auc.mean()),
           "per_class_auroc": dict(zip(names, map(float, per_auc))),
           "macro_ap": float(per_ap.mean()), "per_class_ap": dict(zip(names, map(float, per_ap))),
           "positives": dict(zip(names, map(int, y.sum(axis=0))))}
    if n_boot:
        boots, rejected = bootstrap_macro_auroc(y, s, n_boot=n_boot, seed=seed, classes=names, split=split)
        out["macro_auroc_ci"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
        out["n_boot"], out["boot_rejected"], out["boot_seed"] = int(n_boot), rejected, int(seed)
    else:
        out["macro_auroc_ci"], out["n_boot"], out["boot_rejected"] = None, 0, 0
    if y_val is not None and scores_val is not None:
        if np.asarray(scores_val).shape[-1] != s.shape[1]:
            raise MetricError(f"val: scores_val: expected {s.shape[1]} classes, got {np.asarray(scores_val).shape}")
        thr = best_f1_thresholds(y_val, scores_val, classes=names)
        f1 = f1_at(y, s, thr)
        out.update(macro_f1=float(f1.mean()), per_class_f1=dict(zip(names, map(float, f1))),
                   thresholds=dict(zip(names, map(float, thr))))
    else:
        out.update(macro_f1=None, per_class_f1=None, thresholds=None)
    return out
