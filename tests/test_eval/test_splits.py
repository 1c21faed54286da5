"""Splits: PTB-XL strat_fold on the real records, seeded patient-disjoint splits, the one-line errors."""

import numpy as np
import pytest

from crema_fast.eval.errors import SplitError
from crema_fast.eval.labels import load_labels
from crema_fast.eval.splits import describe_split, split_rows


def test_strat_fold_on_real_records(ptbxl_store):
    t = load_labels(ptbxl_store, "superdiagnostic", drop_empty=False)
    parts = split_rows(t)
    # ../shared/data/README.md: fold 9 holds 81 records, fold 10 66, folds 1-8 the other 353
    assert [len(parts[k]) for k in ("train", "val", "test")] == [353, 81, 66]
    assert (t.strat_fold[parts["val"]] == 9).all() and (t.strat_fold[parts["test"]] == 10).all()
    assert describe_split(t).startswith("PTB-XL strat_fold")
    if t.patient_id is not None:  # PTB-XL's folds respect patients
        assert not set(t.patient_id[parts["test"]]) & set(t.patient_id[parts["train"]])


def test_patient_disjoint_is_seeded_and_disjoint():
    rng = np.random.default_rng(0)
    patients = rng.integers(0, 300, size=1000).astype(str)
    a = split_rows(1000, folds=None, patient_ids=patients, seed=3)
    b = split_rows(1000, folds=None, patient_ids=patients, seed=3)
    c = split_rows(1000, folds=None, patient_ids=patients, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(1000))
    sets = {k: set(patients[v]) for k, v in a.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    # each part about its fraction (a patient holds ~3 rows, so within a few rows)
    assert abs(len(a["test"]) - 100) <= 10 and abs(len(a["val"]) - 100) <= 10


def test_partial_folds_fall_back_to_patients():
    folds = np.r_[np.arange(1, 11), np.zeros(10, int)]
    parts = split_rows(20, folds=folds, patient_ids=np.arange(20).astype(str), val_frac=0.2, test_frac=0.2)
    assert describe_split(20, folds=folds, patient_ids=np.arange(20)).startswith("patient-disjoint")
    assert len(parts["test"]) == 4 and len(parts["val"]) == 4


def test_neither_folds_nor_patients_is_one_line():
    with pytest.raises(SplitError, match="neither PTB-XL strat_fold .* nor patient_id") as info:
        split_rows(10, folds=None, patient_ids=None)
    assert "\n" not in str(info.value)


def test_missing_patient_ids_for_some_rows():
    ids = np.array(["a", "b", "", "c"] * 5, dtype=object)
    with pytest.raises(SplitError, match="5 of 20 rows have none"):
        split_rows(20, folds=None, patient_ids=ids)


def test_a_part_cannot_be_empty():
    with pytest.raises(SplitError, match="train part is empty"):
        split_rows(2, folds=None, patient_ids=np.array(["a", "b"]))
    with pytest.raises(SplitError, match=r"patient_ids: expected shape \(5,\)"):
        split_rows(5, folds=None, patient_ids=np.array(["a", "b"]))
