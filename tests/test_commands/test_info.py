"""crema-fast info: counts, sources, leads, labels, folds, size and quarantine, checked against the
PTB-XL database file, the converter's summary and the files on disk."""

from __future__ import annotations

import ast
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from crema_fast.cli import main
from crema_fast.commands.info import describe, parse_labels
from tests.test_zarr_store.archives import copy_subset, ptbxl_names
from zarr_store.convert import convert
from zarr_store.errors import BadArgumentError

N_RECORDS = 30
TRUNCATED = "00007_hr"  # its .dat cut in half: the converter must skip and report it


@pytest.fixture(scope="module")
def converted(shared_data: Path, tmp_path_factory) -> tuple[Path, object, list[int]]:
    """A store converted from 30 PTB-XL 500 Hz records, one of them truncated. Returns (store, summary,
    ecg_ids of the converted records)."""
    src = shared_data / "ptbxl"
    names = ptbxl_names(shared_data, N_RECORDS)
    root = copy_subset(src, tmp_path_factory.mktemp("info") / "ptbxl", names, ["ptbxl_database.csv"],
                       records_file=True)
    dat = next(root.rglob(f"{TRUNCATED}.dat"))
    data = dat.read_bytes()
    dat.unlink()  # a truncated copy in place of the symlink (the shared file stays intact)
    dat.write_bytes(data[: len(data) // 2])
    store = root.parent / "s.zarr"
    summary = convert([root], store, shard_size=16, progress=False)
    ids = [int(Path(n).name[:5]) for n in names if Path(n).name != TRUNCATED]
    return store, summary, ids


def test_parse_labels():
    assert parse_labels("{'NORM': 100.0, 'SR': 0.0}") == ["NORM", "SR"]
    assert parse_labels("{'NDT': 100.0, 'NST_': 0.0}") == ["NDT", "NST_"]
    assert parse_labels("164889003,59118001") == ["164889003", "59118001"]
    assert parse_labels("  ") == [] and parse_labels("") == []


def test_describe_converted_ptbxl(converted, shared_data):
    store, summary, ids = converted
    f = describe(store, top=100)
    n = len(ids)
    assert summary.converted == n and sum(summary.skipped.values()) == 1
    assert (f["rows"], f["records"], f["rate"], f["window"], f["window_s"]) == (n, n, 500, 5000, 10.0)
    assert f["sources"] == {"ptbxl": n} and f["read_path"] == "direct" and f["conversions"] == 1
    assert f["orig_rates"] == {"500": n}
    assert f["lead_coverage"] == {lead: 1.0 for lead in
                                  ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]}
    # Oracle: PTB-XL's own database file.
    db = pd.read_csv(shared_data / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id").loc[ids]
    want = Counter(code for codes in db.scp_codes for code in ast.literal_eval(codes))
    assert f["labels"] == dict(want) and f["distinct_labels"] == len(want) and f["labelled_records"] == n
    assert f["strat_folds"] == {str(k): int(v) for k, v in sorted(Counter(db.strat_fold).items())}
    assert f["patients"] == db.patient_id.nunique() and f["rows_without_patient"] == 0
    # Size: the files on disk; ratio: raw int16 over the stored signal bytes.
    files = [p for p in Path(store).rglob("*") if p.is_file()]
    signal_bytes = sum(p.stat().st_size for p in Path(store, "signals").rglob("*") if p.is_file())
    assert f["bytes_on_disk"] == sum(p.stat().st_size for p in files)
    assert f["signal_bytes"] == signal_bytes
    assert f["compression_ratio"] == pytest.approx(n * 12 * 5000 * 2 / signal_bytes)
    assert f["quarantine"]["counts"] == summary.skipped
    assert not f["unfinished_conversion"]


def test_cli_output(converted, capsys):
    store, summary, ids = converted
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    (reason,) = summary.skipped
    assert f"rows        {len(ids)}  from {len(ids)} records" in out
    assert "rate        500 Hz, window 5000 samples (10 s)" in out
    assert f"sources     ptbxl: {len(ids)}" in out
    assert "I 100%" in out and "V6 100%" in out
    assert f"quarantine  1 skipped record(s) ({reason}: 1)" in out
    assert "compression" in out and "NORM" in out
    patients = describe(store)["patients"]
    assert f"patients    {patients} distinct patient ids\n" in out


def test_store_that_predates_patient_ids(converted, tmp_path, capsys):
    """A store converted before patient ids were kept: info describes it and says they are not stored."""
    import shutil

    store, _, ids = converted
    old = tmp_path / "old.zarr"
    shutil.copytree(store, old)
    shutil.rmtree(old / "patient_id")
    f = describe(old)
    assert f["patients"] is None and f["rows"] == len(ids)
    assert main(["info", str(old)]) == 0
    assert "patients    patient ids: not stored" in capsys.readouterr().out


def test_not_a_store(tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("x")
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Zarr v3 group" in err[0]
    with pytest.raises(BadArgumentError):
        describe(tmp_path / "plain.txt")


def test_multi_window_cinc_labels_and_missing_leads(tmp_path):
    """Labels and records are counted once per record, lead coverage is the lead_mask's mean; a store
    made by hand (no report) says so."""
    path = tmp_path / "s.zarr"
    g = zarr.open_group(path, mode="w", zarr_format=3)
    g.attrs.update(format_version=1, rate=500, window=50, leads=["I", "II", "III", "aVR", "aVL", "aVF",
                                                                  "V1", "V2", "V3", "V4", "V5", "V6"])
    g.create_array("signals", shape=(5, 12, 50), dtype="int16", chunks=(1, 12, 50), shards=(4, 12, 50))[:] = 1
    mask = np.ones((5, 12), bool)
    mask[:, 6:] = False  # a limb-lead-only archive
    mask[4, 1] = False
    g.create_array("lead_mask", shape=(5, 12), dtype=bool, chunks=(5, 12))[:] = mask
    cols = {"record_id": ["a", "a", "a", "b", "c"], "source": ["cinc", "cinc", "cinc", "cinc", "mit"],
            "labels": ["164889003,59118001"] * 3 + ["59118001", ""]}
    for name, values in cols.items():
        g.create_array(name, shape=(5,), dtype=str, chunks=(5,))[:] = values
    g.create_array("window_index", shape=(5,), dtype="int32", chunks=(5,))[:] = [0, 1, 2, 0, 0]
    g.create_array("valid_length", shape=(5,), dtype="int32", chunks=(5,))[:] = [50, 50, 20, 50, 50]
    f = describe(path)
    assert (f["rows"], f["records"], f["padded_rows"]) == (5, 3, 1)
    assert f["sources"] == {"cinc": 4, "mit": 1}
    assert f["labels"] == {"59118001": 2, "164889003": 1} and f["labelled_records"] == 2
    assert f["lead_coverage"]["I"] == 1.0 and f["lead_coverage"]["II"] == 0.8 and f["lead_coverage"]["V1"] == 0.0
    assert f["quarantine"] is None and f["compression_ratio"] > 1
    assert f["patients"] is None  # made by hand without a patient_id array


def test_memory_store():
    g = zarr.open_group("memory://test_info/s.zarr", mode="w", zarr_format=3)
    g.attrs.update(rate=250, window=100)
    g.create_array("signals", shape=(3, 12, 100), dtype="int16", chunks=(1, 12, 100), shards=(2, 12, 100))[:] = 5
    f = describe("memory://test_info/s.zarr")
    assert (f["rows"], f["records"], f["rate"]) == (3, 3, 250)
    assert f["signal_bytes"] > 0 and f["bytes_on_disk"] > f["signal_bytes"]


def test_info_on_a_missing_path_says_so(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.zarr")]) == 2
    assert capsys.readouterr().err == f"crema-fast info: error: store {tmp_path}/nope.zarr: no such file or folder\n"


def test_info_verify_reports_bad_shards_by_file_and_rows(converted, tmp_path, capsys):
    """A healthy store verifies (exit 0); a truncated shard file, a flipped byte in a chunk and a missing
    shard file are each listed with their file and rows (exit 1), where plain info saw nothing wrong."""
    store, _, ids = converted
    assert main(["info", "--verify", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"verify      2 shard file(s), {len(ids)} chunks" in out and "crc32c checked: all good" in out
    bad = tmp_path / "bad.zarr"
    shutil.copytree(store, bad)
    shard0, shard1 = bad / "signals" / "c" / "0" / "0" / "0", bad / "signals" / "c" / "1" / "0" / "0"
    raw = bytearray(shard0.read_bytes())
    raw[100] ^= 0x01  # inside chunk 0 (row 0)
    shard0.write_bytes(bytes(raw))
    shard1.write_bytes(shard1.read_bytes()[:-1000])  # cut short: its index is gone
    assert main(["info", str(bad)]) == 0  # plain info reads no chunk
    capsys.readouterr()
    assert main(["info", "--verify", "--json", str(bad)]) == 1
    v = json.loads(capsys.readouterr().out)["verify"]
    assert not v["ok"] and [(p["file"], p["rows"]) for p in v["problems"]] == [
        (str(shard0), [0, 0]), (str(shard1), [16, len(ids) - 1])]
    assert "crc32c mismatch" in v["problems"][0]["reason"]
    assert "shard index crc32c mismatch" in v["problems"][1]["reason"]
    shard1.unlink()
    assert main(["info", "--verify", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"BAD       {shard1} (rows 16..{len(ids) - 1}): missing shard file" in out
