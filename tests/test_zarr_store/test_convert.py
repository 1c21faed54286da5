"""zarr_store.convert end to end on real records (oracle: wfdb.rdsamp, scipy's resample_poly): values,
metadata, other databases and rates, bad records reported, appends, fsspec inputs, argument checks.
Per-record conversion is in test_records.py, record selection in test_plan.py, shard tasks and resume in
test_tasks.py, runners in test_runner.py, the files written directly in test_meta_io.py."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import wfdb
import zarr
from scipy.signal import resample_poly

from tests.test_zarr_store.archives import (ARRAYS, BAD_KINDS, DUPLICATE, PTBXL_N, assert_same_arrays, load,
                                            write_archive)
from zarr_store.convert import convert
from zarr_store.errors import BadArgumentError, MissingColumnError
from zarr_store.reader import StoreReader


def test_ptbxl_values_equal_rdsamp(ptbxl_store, shared_data):
    store, summary, names = ptbxl_store
    assert summary.converted == len(names) and summary.rows == len(names)
    assert summary.skipped == {DUPLICATE: 2}  # records100 copies of ECGs 1, 2: their 500 Hz files are here
    report = json.loads((store / "_convert" / "quarantine.json").read_text())
    assert sorted(r["record_id"] for r in report["records"] if r["reason"] == DUPLICATE) == [
        "records100/00000/00001_lr", "records100/00000/00002_lr"]
    a = load(store)
    ids = list(a["record_id"])
    assert sorted(ids) == sorted(names)
    for name in names[:PTBXL_N]:
        row = ids.index(name)
        ref, _ = wfdb.rdsamp(str(shared_data / "ptbxl" / name))
        np.testing.assert_array_equal(a["signals"][row], np.rint(ref.T * 1000).astype(np.int16))
        assert a["lead_mask"][row].all() and a["valid_length"][row] == 5000 and a["orig_rate"][row] == 500
    # 100 Hz versions are resampled x5 by polyphase filtering
    lr = f"records100/00000/{PTBXL_N + 1:05d}_lr"
    row = ids.index(lr)
    ref, _ = wfdb.rdsamp(str(shared_data / "ptbxl" / lr))
    expect = np.rint(resample_poly(ref * 1000, 5, 1, axis=0)).T
    assert np.abs(a["signals"][row] - expect).max() <= 1
    assert a["orig_rate"][row] == 100


def test_ptbxl_labels_folds_age_sex(ptbxl_store, shared_data):
    import pandas as pd

    store, _, _ = ptbxl_store
    a = load(store)
    db = pd.read_csv(shared_data / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id")
    for row, rid in enumerate(a["record_id"]):
        ecg_id = int(Path(rid).name[:5])
        ref = db.loc[ecg_id]
        assert a["labels"][row] == ref["scp_codes"]  # the dict literal, as PTB-XL writes it
        assert a["strat_fold"][row] == ref["strat_fold"]
        assert a["age"][row] == ref["age"] and a["sex"][row] == ref["sex"]
        assert a["patient_id"][row] == str(int(ref["patient_id"]))  # the csv's 15709.0 stored as "15709"
    assert set(a["source"]) == {"ptbxl"}
    got = StoreReader(store).patient_ids()
    assert got.dtype == object and list(got) == list(a["patient_id"])
    assert len(set(got)) == len(set(db.loc[[int(Path(r).name[:5]) for r in a["record_id"]], "patient_id"]))


def test_plain_zarr_open_array_reads_the_signals(ptbxl_store, shared_data):
    store, _, _ = ptbxl_store
    arr = zarr.open_array(str(store / "signals"), mode="r")
    assert arr.shape[1:] == (12, 5000) and arr.chunks == (1, 12, 5000) and arr.shards[0] == 8
    group = zarr.open_group(str(store), mode="r")
    assert group.attrs["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert (group.attrs["rate"], group.attrs["window"], group.attrs["units"]) == (500, 5000, "uV")
    ids = list(group["record_id"][:])
    row = ids.index("records500/00000/00007_hr")
    ref, _ = wfdb.rdsamp(str(shared_data / "ptbxl" / "records500/00000/00007_hr"))
    np.testing.assert_array_equal(arr[row], np.rint(ref.T * 1000).astype(np.int16))


@pytest.fixture(scope="module")
def other_store(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("other")
    summary = convert([shared_data / "other"], tmp / "store.zarr", progress=False, shard_size=64)
    return tmp / "store.zarr", summary


def _rows_of(a, record_id):
    return np.flatnonzero(a["record_id"] == record_id)


@pytest.mark.parametrize("name,up,down", [("mitdb/100", 25, 18), ("qtdb/sel100", 2, 1), ("ptbdb/s0010_re", 1, 2)])
def test_other_rates_resampled_like_scipy(other_store, shared_data, name, up, down):
    store, _ = other_store
    a = load(store)
    rows = _rows_of(a, name.split("/")[1])
    assert set(a["source"][rows]) == {name.split("/")[0]}  # named after its database, not "other"
    ref, fields = wfdb.rdsamp(str(shared_data / "other" / name))
    expect = resample_poly(ref * 1000, up, down, axis=0)
    n_out = len(expect)
    assert len(rows) == (-(-n_out // 5000) if n_out % 5000 >= 500 else n_out // 5000)
    assert list(a["window_index"][rows]) == list(range(len(rows)))
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    names = [{"MLII": "II"}.get(n, n.upper() if n.lower() not in ("avr", "avl", "avf") else "aV" + n[-1].upper())
             for n in fields["sig_name"]]
    for w in (0, 1, len(rows) - 1):  # first windows and the (possibly padded) last one
        row = rows[w]
        seg = expect[w * 5000 : (w + 1) * 5000]
        assert a["valid_length"][row] == len(seg)
        for j, lead in enumerate(names):
            if lead in leads:
                got = a["signals"][row, leads.index(lead), : len(seg)]
                assert np.abs(got - np.rint(seg[:, j])).max() <= 1, (name, w, lead)
        assert not a["signals"][row, :, len(seg):].any()
    assert a["orig_rate"][rows[0]] == fields["fs"]


def test_ptb_keeps_12_leads_drops_frank(other_store):
    store, summary = other_store
    a = load(store)
    rows = _rows_of(a, "s0010_re")
    assert a["lead_mask"][rows].all()
    assert summary.dropped_signals == {"vx": 1, "vy": 1, "vz": 1}
    assert (a["age"][rows[0]], a["sex"][rows[0]]) == (81.0, 1)
    mit = _rows_of(a, "100")
    expect = np.zeros(12, bool)
    expect[[1, 10]] = True  # MLII -> II, V5
    assert (a["lead_mask"][mit] == expect).all()
    assert not a["signals"][mit][:, ~expect].any()
    assert summary.leads_present["II"] == 4 and summary.leads_present["I"] == 2


def test_chapman_mat_with_labels(other_store, shared_data):
    store, _ = other_store
    a = load(store)
    (row,) = _rows_of(a, "JS00001")
    ref, _ = wfdb.rdsamp(str(shared_data / "other/chapman_shaoxing/JS00001"))
    np.testing.assert_array_equal(a["signals"][row], np.rint(ref.T * 1000).astype(np.int16))
    assert a["labels"][row] == "164889003,59118001,164934002"
    assert (a["age"][row], a["sex"][row], a["strat_fold"][row]) == (85.0, 0, 0)
    assert set(a["patient_id"]) == {""}  # no header of these databases names its patient


def test_bad_records_reported_good_ones_converted(tmp_path):
    arch = write_archive(tmp_path / "arch", n=3)
    summary = convert([arch.root], tmp_path / "s.zarr", progress=False)
    assert summary.converted == 3
    assert summary.skipped == {kind: 1 for kind in BAD_KINDS}
    report = json.loads((tmp_path / "s.zarr" / "_convert" / "quarantine.json").read_text())
    assert {r["record_id"]: r["reason"] for r in report["records"]} == arch.bad
    a = load(tmp_path / "s.zarr")
    assert list(a["record_id"]) == arch.good
    for row, name in enumerate(arch.good):
        np.testing.assert_array_equal(a["signals"][row], np.rint(arch.signals[name].T * 1000).astype(np.int16))
    assert list(a["age"]) == [40, 41, 42] and list(a["sex"]) == [0, 1, 0]
    assert list(a["labels"]) == ["100,7", "101,7", "102,7"]
    conv = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["conversions"]
    assert len(conv) == 1 and conv[0]["skipped"] == summary.skipped and conv[0]["records_converted"] == 3


@pytest.mark.parametrize("workers", [1, 2])
def test_phases_account_for_the_call(tmp_path, workers):
    """ConvertSummary.phases: the steps in the order they ran (the chunk encoder loaded up front only
    for worker processes), none negative, together the call's seconds; the provenance keeps them."""
    arch = write_archive(tmp_path / "arch", n=4)
    summary = convert([arch.root], tmp_path / "s.zarr", progress=False, workers=workers, shard_size=2)
    steps = ["discover", "open", *(["encoder"] if workers > 1 else []), "workers", "select", "records",
             "metadata", "finish"]
    assert list(summary.phases) == steps and min(summary.phases.values()) >= 0
    before_summary = sum(v for k, v in summary.phases.items() if k != "finish")
    assert before_summary <= summary.seconds <= before_summary + summary.phases["finish"]  # seconds: read in "finish"
    conv = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["conversions"][0]
    assert list(conv["phases"]) == steps[:-1]
    assert conv["phases"]["records"] == round(summary.phases["records"], 3)


def test_append_second_archive(tmp_path):
    a = write_archive(tmp_path / "a", n=5, bad=())
    b = write_archive(tmp_path / "b", n=6, seed=50, bad=("flat",))
    store = tmp_path / "s.zarr"
    convert([a.root], store, progress=False, shard_size=4)
    summary = convert([b.root], store, progress=False, shard_size=4)
    assert summary.rows == 6 and summary.rows_total == 11
    convert([b.root], tmp_path / "b.zarr", progress=False, shard_size=4)
    convert([a.root], tmp_path / "a.zarr", progress=False, shard_size=4)
    got, ra, rb = load(store), load(tmp_path / "a.zarr"), load(tmp_path / "b.zarr")
    for name in ARRAYS:
        np.testing.assert_array_equal(got[name], np.concatenate([ra[name], rb[name]]), err_msg=name)
    assert list(got["source"]) == ["a"] * 5 + ["b"] * 6
    group = zarr.open_group(str(store), mode="r")
    assert [c["rows"] for c in group.attrs["conversions"]] == [[0, 5], [5, 11]]
    report = json.loads((store / "_convert" / "quarantine.json").read_text())
    assert report["counts"] == {"flat": 1}
    with pytest.raises(BadArgumentError, match="rate"):
        convert([a.root], store, progress=False, shard_size=4, rate=250)
    with pytest.raises(BadArgumentError, match="codec"):
        convert([a.root], store, progress=False, shard_size=4, codec="lz4")


def test_append_to_a_store_without_patient_id_keeps_it_without(tmp_path):
    """A store converted before patient ids were kept (here: its patient_id array removed) still takes
    appends, and stays without the column rather than mixing unknown ids with known ones."""
    a = write_archive(tmp_path / "a", n=3, bad=())
    b = write_archive(tmp_path / "b", n=2, seed=50, bad=())
    store = tmp_path / "s.zarr"
    convert([a.root], store, progress=False, shard_size=4)
    shutil.rmtree(store / "patient_id")
    summary = convert([b.root], store, progress=False, shard_size=4)
    assert summary.rows == 2 and summary.rows_total == 5 and not (store / "patient_id").exists()
    r = StoreReader(store)
    assert list(r.column("record_id")) == a.good + b.good
    with pytest.raises(MissingColumnError, match="predates patient_id"):
        r.patient_ids()


def test_memory_url_input(tmp_path):
    """Sources as fsspec URLs: the same rows as from the local copy (RECORDS and walk, bad kinds)."""
    import fsspec

    arch = write_archive(tmp_path / "arch", n=3, fs=360, bad=("truncated", "missing signal file", "flat"))
    fs = fsspec.filesystem("memory")
    base = f"/{uuid.uuid4().hex}"
    fs.put(str(arch.root), f"{base}/arch", recursive=True)
    local = convert([arch.root], tmp_path / "local.zarr", progress=False, shard_size=4)
    remote = convert([f"memory://{base}/arch"], tmp_path / "remote.zarr", progress=False, shard_size=4, workers=2)
    assert remote.converted == local.converted == 3 and remote.skipped == local.skipped
    assert_same_arrays(load(tmp_path / "remote.zarr"), load(tmp_path / "local.zarr"))
    fs.rm(f"{base}/arch/RECORDS")  # now found by walking
    walked = convert([f"memory://{base}/arch"], f"memory://{base}/out.zarr", progress=False, shard_size=4)
    assert walked.converted == 3 and walked.skipped == local.skipped
    assert_same_arrays(load(f"memory://{base}/out.zarr"), load(tmp_path / "local.zarr"))
    with pytest.raises(BadArgumentError, match="no such folder"):
        convert([f"memory://{base}/nothing"], tmp_path / "x.zarr", progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(BadArgumentError, match="no such folder"):
        convert([tmp_path / "missing"], tmp_path / "s.zarr", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadArgumentError, match="no WFDB records"):
        convert([tmp_path / "empty"], tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()  # nothing created for a failed call
    arch = write_archive(tmp_path / "arch", n=1, bad=())
    (tmp_path / "file.txt").write_text("x")
    not_a_store = "expected a crema-fast store or a new path, got"
    with pytest.raises(BadArgumentError, match=f"{not_a_store} a file"):
        convert([arch.root], tmp_path / "file.txt", progress=False)
    with pytest.raises(BadArgumentError, match=f"{not_a_store} a folder"):
        convert([arch.root], arch.root, progress=False)  # a non-empty folder that is not a store
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(3,), dtype="int8")
    with pytest.raises(BadArgumentError, match=f"{not_a_store} a Zarr array"):
        convert([arch.root], tmp_path / "array.zarr", progress=False)
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    with pytest.raises(BadArgumentError, match=f"{not_a_store} a zarr.json that is not JSON"):
        convert([arch.root], tmp_path / "broken.zarr", progress=False)
    zarr.open_group(str(tmp_path / "group.zarr"), mode="w")
    with pytest.raises(BadArgumentError, match=f"{not_a_store} a Zarr group without format_version"):
        convert([arch.root], tmp_path / "group.zarr", progress=False)
    with pytest.raises(BadArgumentError, match="codec"):
        convert([arch.root], tmp_path / "s2.zarr", progress=False, codec="gzip")
    with pytest.raises(BadArgumentError, match="window_s"):
        convert([arch.root], tmp_path / "s3.zarr", progress=False, window_s=0.0011)
