"""zarr_store.plan's record selection through convert: records already in the store and PTB-XL's
lower-rate copies are skipped, never duplicated."""

from __future__ import annotations

import json

import numpy as np

from tests.test_zarr_store.archives import DUPLICATE, copy_subset, load, write_archive
from zarr_store.convert import convert
from zarr_store.plan import SAME_ID


def test_overlapping_sources_never_duplicate_rows(tmp_path):
    """A folder of two databases (each with its RECORDS): converting one, then the parent, then the
    other again appends each record once, named after its database (not the folder converted)."""
    a = write_archive(tmp_path / "data" / "dba", n=3, bad=("flat",))
    b = write_archive(tmp_path / "data" / "dbb", n=2, seed=50, bad=())
    store = tmp_path / "s.zarr"
    first = convert([a.root], store, progress=False, shard_size=4)
    assert first.converted == 3
    both = convert([tmp_path / "data"], store, progress=False, shard_size=4)
    assert both.converted == 2 and both.skipped == {"already in store": 3, "flat": 1}
    assert "already in store 3" in both.format()
    again = convert([b.root, a.root], store, progress=False, shard_size=4)  # a new source list, nothing new
    assert again.converted == 0 and again.rows == 0 and again.skipped == {"already in store": 5, "flat": 1}
    got = load(store)
    assert list(zip(got["source"], got["record_id"])) == [("dba", n) for n in a.good] + [("dbb", n) for n in b.good]
    for row, (db, name) in enumerate(zip(got["source"], got["record_id"])):
        sig = (a if db == "dba" else b).signals[name]
        np.testing.assert_array_equal(got["signals"][row], np.rint(sig.T * 1000).astype(np.int16))
    twice = convert([a.root, tmp_path / "data"], tmp_path / "t.zarr", progress=False)  # within one call
    assert twice.converted == 5 and twice.skipped == {"already in store": 4, "flat": 1}  # each inspected once


def test_one_record_id_in_two_folders_is_reported_not_stored_twice(tmp_path):
    """a/dba/good000 and b/dba/good000 are different ECGs that both get the id dba/good000: the first is
    stored, the second is reported naming both files; the same folder reached through a symbolic link
    is the same file, converted once and not reported."""
    a = write_archive(tmp_path / "a" / "dba", n=2, bad=())
    write_archive(tmp_path / "b" / "dba", n=3, seed=50, bad=())
    (tmp_path / "link").symlink_to(tmp_path / "a" / "dba")
    summary = convert([a.root, tmp_path / "b" / "dba", tmp_path / "link"], tmp_path / "s.zarr", progress=False)
    assert summary.converted == 3 and summary.skipped == {SAME_ID: 2, "already in store": 2}
    got = load(tmp_path / "s.zarr")
    assert list(zip(got["source"], got["record_id"])) == [("dba", "good000"), ("dba", "good001"),
                                                         ("dba", "good002")]
    np.testing.assert_array_equal(got["signals"][0], np.rint(a.signals["good000"].T * 1000).astype(np.int16))
    report = json.loads((tmp_path / "s.zarr" / "_convert" / "quarantine.json").read_text())["records"]
    assert [(r["record_id"], r["reason"]) for r in report] == [("good000", SAME_ID), ("good001", SAME_ID)]
    assert str(tmp_path / "b" / "dba" / "good000") in report[0]["detail"]
    assert str(tmp_path / "a" / "dba" / "good000") in report[0]["detail"]


def test_ptbxl_below_the_root_keeps_labels_and_drops_rate_copies(shared_data, tmp_path):
    """Converting the folder above ptbxl/ (as ../shared/data): the csv below the root is found, the
    records are named "ptbxl", and each ECG is stored once, at 500 Hz."""
    import pandas as pd

    names = [f"records{r}/00000/{i:05d}_{s}" for r, s in (("500", "hr"), ("100", "lr")) for i in (1, 2, 3)]
    copy_subset(shared_data / "ptbxl", tmp_path / "data" / "ptbxl", names, ["ptbxl_database.csv"],
                records_file=True)
    summary = convert([tmp_path / "data"], tmp_path / "s.zarr", progress=False)
    assert summary.converted == 3 and summary.skipped == {DUPLICATE: 3}
    a = load(tmp_path / "s.zarr")
    assert list(a["record_id"]) == names[:3] and set(a["source"]) == {"ptbxl"}
    db = pd.read_csv(shared_data / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id")
    assert list(a["labels"]) == list(db.loc[[1, 2, 3], "scp_codes"])
    assert list(a["strat_fold"]) == list(db.loc[[1, 2, 3], "strat_fold"])
    # the 100 Hz copies alone, appended later: their 500 Hz files are in the store
    later = convert([tmp_path / "data" / "ptbxl" / "records100"], tmp_path / "s.zarr", progress=False)
    assert later.converted == 0 and later.skipped == {DUPLICATE: 3}
