"""Evaluation reports: one JSON object, a readable table, ROC curves per class as a PNG.

Every report names where its numbers came from: ``checkpoint`` (None for a random-init encoder, said
in ``encoder``), ``store``, ``label_set`` and ``split``; ``metrics`` is ``metrics.evaluate``'s dict.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from crema_fast.eval.metrics import roc_curve

REQUIRED = ("checkpoint", "store", "label_set", "split")


def build_report(metrics: dict, *, checkpoint, store: str, label_set: str, split: str, method: str = "linear probe",
                 **extra) -> dict:
    """The report dict: where it came from, then ``extra`` (sizes, probe settings, ...), then metrics."""
    import crema_fast

    return {"method": method, "checkpoint": None if checkpoint is None else str(checkpoint), "store": str(store),
            "label_set": label_set, "split": split, **extra, "metrics": metrics,
            "crema_fast": crema_fast.__version__, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def format_table(report: dict) -> str:
    """The report as lines of text: provenance, the macro numbers, then one line per class."""
    m = report["metrics"]
    ci = m.get("macro_auroc_ci")
    ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f}, {m['n_boot']} bootstrap resamples)" if ci else ""
    lines = [
        f"{report.get('method', 'evaluation')} on {report['label_set']}, {report['split']}",
        f"checkpoint  {report['checkpoint'] or 'none (random init)'}",
        f"store       {report['store']}",
    ]
    if isinstance(report.get("rows"), dict):
        lines.append("rows        " + ", ".join(f"{k} {v}" for k, v in report["rows"].items()))
    if "probe_C" in report:
        lines.append(f"probe C     {report['probe_C']:g} (chosen on the validation split)")
    lines += [
        f"test rows   {m['n']}",
        f"macro AUROC {m['macro_auroc']:.3f}{ci_text}",
        f"macro AP    {m['macro_ap']:.3f}",
    ]
    if m.get("macro_f1") is not None:
        lines.append(f"macro F1    {m['macro_f1']:.3f} (thresholds chosen on the validation split)")
    width = max(8, *(len(c) for c in m["classes"]))
    head = f"{'class':<{width}}  {'pos':>5}  {'AUROC':>6}  {'AP':>6}" + ("  {:>6}".format("F1") if m.get("per_class_f1") else "")
    lines += ["", head]
    for c in m["classes"]:
        row = f"{c:<{width}}  {m['positives'][c]:>5}  {m['per_class_auroc'][c]:>6.3f}  {m['per_class_ap'][c]:>6.3f}"
        if m.get("per_class_f1"):
            row += f"  {m['per_class_f1'][c]:>6.3f}"
        lines.append(row)
    return "\n".join(lines)


def plot_roc(path: str | os.PathLike, y_true, scores, classes, title: str) -> str:
    """ROC curves of every class in one PNG: y_true 0/1 (N, C), scores (N, C)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    y, s = np.asarray(y_true), np.asarray(scores)
    fig, ax = plt.subplots(figsize=(5.5, 5.0), dpi=120)
    for j, c in enumerate(classes):
        if 0 < y[:, j].sum() < len(y):
            fpr, tpr = roc_curve(y[:, j], s[:, j])
            auc = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
            ax.plot(fpr, tpr, lw=1.5, label=f"{c} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def write_report(out_dir: str | os.PathLike, report: dict, *, y_true=None, scores=None,
                 name: str = "report") -> dict[str, str]:
    """``out_dir``/``name``.json (and ``name``_roc.png when y_true / scores of the test split are given).
    Returns {"json": path, "roc": path}."""
    missing = [k for k in REQUIRED if k not in report]
    if missing:
        raise ValueError(f"report: expected the fields {list(REQUIRED)}, missing {missing}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": str(out / f"{name}.json")}
    tmp = out / f".{name}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, paths["json"])  # a reader never sees half a report
    if y_true is not None and scores is not None:
        title = f"{report['label_set']}, {report['split'].split(':')[0]}\n" \
                f"{Path(str(report['checkpoint'])).name if report['checkpoint'] else 'random init'}"
        paths["roc"] = plot_roc(out / f"{name}_roc.png", y_true, scores, report["metrics"]["classes"], title)
    return paths
