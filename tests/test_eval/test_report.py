"""Reports: the JSON names checkpoint, store, label set and split; the table; the ROC PNG."""

import json

import numpy as np
import pytest

from crema_fast.eval.metrics import evaluate, roc_curve
from crema_fast.eval.report import build_report, format_table, write_report


def _metrics():
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.3).astype(int)
    s = rng.normal(size=(120, 3)) + y
    return y, s, evaluate(y, s, y_val=y, scores_val=s, n_boot=100, classes=["NORM", "MI", "CD"])


def test_report_json_table_and_png(tmp_path):
    y, s, m = _metrics()
    report = build_report(m, checkpoint="runs/x/checkpoints/step_0000002.pt", store="/data/s.zarr",
                          label_set="superdiagnostic", split="PTB-XL strat_fold: train 1-8, val 9, test 10",
                          rows={"train": 10, "val": 5, "test": 120}, probe_C=0.1)
    paths = write_report(tmp_path / "rep", report, y_true=y, scores=s)
    got = json.loads(open(paths["json"]).read())
    for key in ("checkpoint", "store", "label_set", "split"):
        assert got[key] == report[key]
    assert got["metrics"]["macro_auroc"] == pytest.approx(m["macro_auroc"])
    assert open(paths["roc"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = format_table(report)
    assert "step_0000002.pt" in table and "superdiagnostic" in table and "strat_fold" in table
    assert f"macro AUROC {m['macro_auroc']:.3f} (95% CI" in table
    assert any(line.startswith("MI ") and f"{m['per_class_auroc']['MI']:.3f}" in line for line in table.splitlines())
    assert "train 10, val 5, test 120" in table


def test_random_init_report_and_missing_fields(tmp_path):
    _, _, m = _metrics()
    report = build_report(m, checkpoint=None, store="s", label_set="snomed", split="patient-disjoint")
    assert "none (random init)" in format_table(report)
    del report["split"]
    with pytest.raises(ValueError, match="missing \\['split'\\]"):
        write_report(tmp_path, report)


def test_roc_curve_ends():
    fpr, tpr = roc_curve(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.5, 0.5]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0, 1.0]
