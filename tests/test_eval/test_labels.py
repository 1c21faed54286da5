"""Label sets on the real PTB-XL records, CinC SNOMED codes, a user's CSV, and the one-line errors."""

import numpy as np
import pytest

from crema_fast.eval.errors import LabelsError
from crema_fast.eval.labels import SUPERCLASSES, load_labels, parse_codes, parse_scp_codes
from tests.test_eval.stores import wfdb_store


def test_superdiagnostic_counts_on_records_1_to_500(ptbxl_store):
    # ../shared/data/README.md: every diagnostic code counted (no likelihood threshold) gives these.
    t = load_labels(ptbxl_store, "superdiagnostic", drop_empty=False)
    assert t.classes == SUPERCLASSES
    assert t.counts() == {"NORM": 297, "MI": 73, "STTC": 96, "CD": 78, "HYP": 40}
    assert int((t.y.sum(axis=1) == 0).sum()) == 12
    assert len(t) == 500 and t.y.dtype == np.float32 and t.rows.dtype == np.int64
    assert t.source.endswith("scp_statements.csv")  # found beside the store's sources
    # the benchmark drops records with no superclass
    kept = load_labels(ptbxl_store, "superdiagnostic")
    assert len(kept) == 488 and kept.n_empty == 12 and kept.y.any(axis=1).all()
    assert kept.counts() == t.counts()


def test_record_1_and_folds(ptbxl_store):
    t = load_labels(ptbxl_store, "superdiagnostic")
    assert t.record_ids[0] == "records500/00000/00001_hr" and t.rows[0] == 0
    assert t.y[0].tolist() == [1, 0, 0, 0, 0]  # {'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}
    full = load_labels(ptbxl_store, "superdiagnostic", drop_empty=False)
    # README: folds 9 and 10 hold 81 and 66 of the 500 records
    assert int((full.strat_fold == 9).sum()) == 81 and int((full.strat_fold == 10).sum()) == 66


def test_other_ptbxl_sets(ptbxl_store, scp_statements):
    sub = load_labels(ptbxl_store, "subdiagnostic", scp_statements=scp_statements)
    diag = load_labels(ptbxl_store, "diagnostic")
    assert len(sub) == len(diag) == 488  # the same records have diagnostic codes
    # ASMI (anteroseptal MI) is a diagnostic code whose subclass is AMI and superclass MI
    assert "ASMI" in diag.classes and "ASMI" not in sub.classes and "AMI" in sub.classes
    assert {"NORM", "STTC", "LVH"} <= set(sub.classes)
    # every record with ASMI is positive for AMI
    asmi = diag.y[:, diag.classes.index("ASMI")] == 1
    assert asmi.any() and (sub.y[asmi, sub.classes.index("AMI")] == 1).all()
    rhythm = load_labels(ptbxl_store, "rhythm")
    assert "SR" in rhythm.classes and "NORM" not in rhythm.classes
    form = load_labels(ptbxl_store, "form")
    assert "NORM" not in form.classes and form.y.any(axis=1).all()
    every = load_labels(ptbxl_store, "all")
    assert len(every) == 500 and {"NORM", "SR", "LVOLT"} <= set(every.classes)
    assert list(every.classes) == sorted(every.classes)
    # min_count keeps only classes with enough positives
    common = load_labels(ptbxl_store, "all", min_count=50)
    assert all(n >= 50 for n in common.counts().values()) and len(common.classes) < len(every.classes)


def test_min_likelihood(ptbxl_store):
    # record 2 is {'NORM': 80.0, 'SBRAD': 0.0}: NORM at 80 % drops out at a threshold of 100
    all_codes = load_labels(ptbxl_store, "superdiagnostic", drop_empty=False)
    strict = load_labels(ptbxl_store, "superdiagnostic", drop_empty=False, min_likelihood=100)
    assert all_codes.y[1, 0] == 1 and strict.y[1, 0] == 0
    assert (strict.y <= all_codes.y).all() and strict.y.sum() < all_codes.y.sum()


def test_parsers():
    assert parse_scp_codes("{'NORM': 100.0, 'SR': 0.0}") == {"NORM": 100.0, "SR": 0.0}
    assert parse_scp_codes("164889003,59118001") is None
    assert parse_codes("164889003, 59118001") == ["164889003", "59118001"]
    assert parse_codes("{'MI': 50.0}") == ["MI"]


def test_missing_scp_statements_is_one_line(small_store, scp_statements):
    with pytest.raises(LabelsError, match="--scp-statements") as info:
        load_labels(small_store, "superdiagnostic")
    assert "\n" not in str(info.value)
    t = load_labels(small_store, "superdiagnostic", scp_statements=scp_statements)
    assert len(t) + t.n_empty == 120


def test_unknown_label_set(small_store):
    with pytest.raises(LabelsError, match="expected one of .*superdiagnostic.*got 'superclass'"):
        load_labels(small_store, "superclass")


def test_user_csv(small_store, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("record_id,labels\n"
                    "records500/00000/00001_hr,\"AF, RBBB\"\n"
                    "records500/00000/00002_hr,AF\n"
                    "records500/00000/00002_hr,LBBB\n"
                    "records500/00000/00003_hr,\n"
                    "not/in/the/store,AF\n")
    t = load_labels(small_store, "csv", csv=str(path))
    assert t.classes == ("AF", "LBBB", "RBBB")
    assert t.rows.tolist() == [0, 1] and t.n_empty == 1  # record 3 is listed without labels
    assert t.y.tolist() == [[1, 0, 1], [1, 1, 0]]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nx,AF\n")
    with pytest.raises(LabelsError, match="'record_id' and 'labels'"):
        load_labels(small_store, "csv", csv=str(bad))
    none = tmp_path / "none.csv"
    none.write_text("record_id,labels\nx,AF\n")
    with pytest.raises(LabelsError, match="none of its record ids"):
        load_labels(small_store, "csv", csv=str(none))


def test_cinc_snomed_codes(tmp_path, shared_data):
    from zarr_store.convert import convert

    store = wfdb_store(tmp_path, [["Age: 50", "Sex: Male", "Dx: 426783006"],
                                   ["Age: 61", "Sex: Female", "Dx: 164889003,59118001"]])
    # and the real Chapman-Shaoxing record (Dx 164889003,59118001,164934002), appended
    convert([shared_data / "other" / "chapman_shaoxing"], store, progress=False)
    t = load_labels(store, "snomed")
    assert t.classes == ("164889003", "164934002", "426783006", "59118001")
    assert t.y.tolist() == [[0, 0, 1, 0], [1, 0, 0, 1], [1, 1, 0, 1]]
    assert t.strat_fold is None  # no PTB-XL folds here
    with pytest.raises(LabelsError, match="PTB-XL scp_codes"):
        load_labels(store, "superdiagnostic", scp_statements=str(shared_data / "ptbxl" / "scp_statements.csv"))


def test_store_without_labels_is_one_line(tmp_path):
    store = wfdb_store(tmp_path, [[], []])
    with pytest.raises(LabelsError, match="holds no labels") as info:
        load_labels(store, "snomed")
    assert "\n" not in str(info.value)
