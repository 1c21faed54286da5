"""The linear probe: a separable synthetic task, C chosen on validation, embed -> probe on real records."""

import numpy as np
import pytest

from crema_fast.eval.errors import EvalError, MetricError
from crema_fast.eval.labels import load_labels
from crema_fast.eval.metrics import auroc
from crema_fast.eval.probe import align, fit_probe, probe_table


def _separable(n, rng, w, scales):
    x = rng.normal(size=(n, w.shape[0])) * scales  # features of different scales: standardization matters
    return x, (x @ w > 0).astype(np.float32)


def test_probe_separates_a_separable_task():
    rng = np.random.default_rng(0)
    w, scales = rng.normal(size=(16, 3)), rng.uniform(0.1, 10, size=16)
    (xt, yt), (xv, yv), (xs, ys) = (_separable(n, rng, w, scales) for n in (400, 200, 200))
    probe = fit_probe(xt, yt, xv, yv, Cs=(0.01, 1.0, 100.0))
    scores = probe.predict_scores(xs)
    assert scores.shape == (200, 3)
    assert auroc(ys, scores).min() >= 0.99
    assert set(probe.val_auroc) == {0.01, 1.0, 100.0}
    assert probe.val_auroc[probe.C] == max(probe.val_auroc.values())


def test_C_is_chosen_on_validation():
    # Few rows, many noise features: strong regularization wins on validation.
    rng = np.random.default_rng(1)
    d = 200
    def data(n):
        x = rng.normal(size=(n, d))
        return x, (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)[:, None]
    (xt, yt), (xv, yv) = data(60), data(300)
    probe = fit_probe(xt, yt, xv, yv, Cs=(0.001, 0.01, 1000.0))
    assert probe.C < 1000.0 and probe.val_auroc[probe.C] > probe.val_auroc[1000.0]


def test_probe_errors():
    x, y = np.zeros((10, 3)), np.zeros((10, 2))
    y[:5, 0] = 1
    y[::2, 1] = 1
    with pytest.raises(EvalError, match=r"expected x_train \(N, D\)"):
        fit_probe(x, y, x[:, :2], y)
    y[:, 1] = 1
    with pytest.raises(MetricError, match="class 'B' has no negatives in the train split"):
        fit_probe(x, y, x, y, classes=["A", "B"])


def test_empty_class_in_a_split_is_one_line(small_store, scp_statements):
    # Records 1-120: no HYP record in fold 10 (README counts), so the test split cannot score HYP.
    table = load_labels(small_store, "superdiagnostic", scp_statements=scp_statements)
    x = np.random.default_rng(0).normal(size=(len(table), 8))
    with pytest.raises(MetricError, match="class 'HYP' has no positives in the test split") as info:
        probe_table(x, table, n_boot=10)
    assert "\n" not in str(info.value)


def test_align_checks_the_store(small_store, scp_statements):
    table = load_labels(small_store, "superdiagnostic", scp_statements=scp_statements)
    ids = np.array([f"records500/00000/{i:05d}_hr" for i in range(1, 121)])
    emb = np.arange(120 * 2, dtype=np.float32).reshape(120, 2)
    np.testing.assert_array_equal(align(ids, emb, table), emb[table.rows])
    with pytest.raises(EvalError, match="expected embeddings of the same store"):
        align(ids[::-1], emb, table)
    with pytest.raises(EvalError, match="50 rows"):
        align(ids[:50], emb[:50], table)
    with pytest.raises(EvalError, match="121 rows, but the store has 120"):
        align(np.r_[ids, ["x"]], np.r_[emb, emb[:1]], table, store_rows=120)


def test_embed_then_probe_on_real_records(ptbxl_store, tmp_path):
    # The 500 real records: random-init tiny encoder -> embeddings file -> probe on strat_fold.
    from crema_fast.eval.embed import embed_store, read_embeddings, write_embeddings

    ids, emb = embed_store(ptbxl_store, None, preset="tiny", random_init=True, progress=False, device="cpu")
    write_embeddings(tmp_path / "e.zarr", ids, emb, {"checkpoint": None})
    e = read_embeddings(tmp_path / "e.zarr")
    table = load_labels(ptbxl_store, "superdiagnostic")
    res = probe_table(align(e.record_ids, e.emb, table), table, n_boot=200)
    m = res.metrics
    assert {k: len(v) for k, v in res.parts.items()} == {"train": 352, "val": 72, "test": 64}
    assert m["n"] == 64 and m["classes"] == ["NORM", "MI", "STTC", "CD", "HYP"]
    # even an untrained encoder's features carry signal on these records (0.77 when written); chance is 0.5
    assert 0.6 < m["macro_auroc"] < 1.0
    lo, hi = m["macro_auroc_ci"]
    assert lo < m["macro_auroc"] < hi and hi - lo < 0.3
    assert m["macro_f1"] is not None and res.scores_test.shape == (64, 5)


def test_missing_patient_ids_are_one_line(tmp_path, small_store, scp_statements):
    import dataclasses

    from crema_fast.eval.errors import SplitError
    from tests.test_eval.stores import wfdb_store

    # CinC-like rows: labels, no folds, no patient id in the headers
    store = wfdb_store(tmp_path, [[f"Dx: {'164889003' if k % 2 else '426783006'}"] for k in range(12)])
    table = load_labels(store, "snomed")
    x = np.random.default_rng(0).normal(size=(len(table), 4))
    with pytest.raises(SplitError, match="patient_id: 12 of 12 rows have none") as info:
        probe_table(x, table, n_boot=10)
    assert "\n" not in str(info.value)
    # a store converted before patient ids were kept: the column is absent
    old = dataclasses.replace(load_labels(small_store, "superdiagnostic", scp_statements=scp_statements),
                              patient_id=None)
    with pytest.raises(SplitError, match="no patient_id .*reconvert"):
        probe_table(np.zeros((len(old), 4)), old, split_by="patient")
    with pytest.raises(SplitError, match="neither PTB-XL strat_fold .* nor patient_id"):
        probe_table(np.zeros((len(old), 4)), dataclasses.replace(old, strat_fold=None))
