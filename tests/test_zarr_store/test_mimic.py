"""MIMIC-IV-ECG (zarr_store.mimic, crema-fast info --where / --export-meta) on a small MIMIC-shaped tree the
tests write themselves: 6 studies of 3 subjects made from real PTB-XL records (written again with
wfdb.wrsamp at MIMIC's gain of 200/mV, format 16, MIMIC's lead order with aVF before aVL, under
files/pNNNN/pXXXXXXXX/sYYYYYYYY/YYYYYYYY), record_list.csv and machine_measurements.csv written by pandas,
one study missing from machine_measurements.csv and one malformed record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from crema_fast.cli import main
from crema_fast.commands import _where
from crema_fast.commands.info import describe
from zarr_store import mimic
from zarr_store.convert import convert
from zarr_store.errors import BadArgumentError, MissingColumnError
from zarr_store.reader import StoreReader
from zarr_store.wfdb_io import LEADS

MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
STUDIES = [("10000032", "40689238"), ("10000032", "40689239"), ("10000117", "45090959"),
           ("10000117", "45090960"), ("10000560", "41225301"), ("10000560", "41225302")]
BAD = ("10000560", "41225303")
REPORTS = {0: ["Sinus rhythm", "Normal ECG"], 1: ["Atrial fibrillation with rapid ventricular response", "Low QRS voltages"],
           2: ["Sinus bradycardia"], 3: ["Atrial fibrillation", "Left axis deviation", "Abnormal ECG"],
           5: ["Sinus rhythm", "Borderline ECG"]}  # study 4 has no machine_measurements row
MISSING = 4


def rid(subject: str, study: str) -> str:
    return f"files/p{subject[:4]}/p{subject}/s{study}/{study}"


def time_of(k: int) -> str:
    return f"2180-07-2{k} 08:44:00"


def write_mimic(root: Path, shared_data: Path) -> Path:
    import wfdb

    rows = []
    for k, (subject, study) in enumerate(STUDIES):
        p, fields = wfdb.rdsamp(str(shared_data / "ptbxl" / "records500" / "00000" / f"{k + 1:05d}_hr"))
        low = [n.lower() for n in fields["sig_name"]]
        folder = root / Path(rid(subject, study)).parent
        folder.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(study, fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS,
                    p_signal=p[:, [low.index(n.lower()) for n in MIMIC_LEADS]], fmt=["16"] * 12,
                    adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder))
        rows.append(dict(subject_id=int(subject), study_id=int(study), file_name=study, ecg_time=time_of(k),
                         path=rid(subject, study)))
    bad = root / rid(*BAD)
    bad.parent.mkdir(parents=True)
    bad.with_suffix(".hea").write_text("this is not a header\n")
    rows.append(dict(subject_id=int(BAD[0]), study_id=int(BAD[1]), file_name=BAD[1], ecg_time="2181-01-01 00:00:00",
                     path=rid(*BAD)))
    pd.DataFrame(rows).to_csv(root / "record_list.csv", index=False)
    mm = []
    for k, lines in REPORTS.items():
        subject, study = STUDIES[k]
        r = dict(subject_id=int(subject), study_id=int(study), cart_id=6848296 + k, ecg_time=time_of(k))
        r.update({f"report_{i}": lines[i] if i < len(lines) else None for i in range(18)})
        r.update(bandwidth="0.005-150 Hz", filtering="60 Hz notch Baseline filter", rr_interval=659 + k, p_onset=40,
                 p_end=128, qrs_onset=170, qrs_end=258, t_end=518, p_axis=81, qrs_axis=77, t_axis=79)
        mm.append(r)
    pd.DataFrame(mm).to_csv(root / "machine_measurements.csv", index=False)
    return root


@pytest.fixture(scope="module")
def tree(shared_data, tmp_path_factory) -> Path:
    return write_mimic(tmp_path_factory.mktemp("mimic") / "mimic-iv-ecg", shared_data)


@pytest.fixture(scope="module")
def store(tree) -> tuple[Path, object]:
    out = tree.parent / "store.zarr"
    summary = convert([tree], out, progress=False, shard_size=4)
    return out, summary


def test_ids_and_times_joined(store):
    out, summary = store
    assert summary.converted == 6 and summary.skipped == {"malformed header": 1}
    r = StoreReader(out)
    assert r.column("record_id").tolist() == [rid(*s) for s in STUDIES]
    assert set(r.column("source").tolist()) == {"mimic-iv-ecg"}
    assert r.patient_ids().tolist() == [s[0] for s in STUDIES]
    assert r.study_ids().tolist() == [s[1] for s in STUDIES]
    assert r.column("ecg_time").tolist() == [time_of(k) for k in range(6)]


def test_values_equal_rdsamp(store, tree):
    import wfdb

    r = StoreReader(out := store[0])
    batch = r.read(np.arange(6))
    for k, s in enumerate(STUDIES):
        p, fields = wfdb.rdsamp(str(tree / rid(*s)))
        low = [n.lower() for n in fields["sig_name"]]
        expected = np.rint(p[:, [low.index(lead.lower()) for lead in LEADS]].T * 1000).astype(np.int16)
        np.testing.assert_array_equal(batch.signals[k], expected, err_msg=f"{out} row {k}")
        assert batch.lead_mask[k].all() and batch.valid_length[k] == 5000


def test_malformed_record_quarantined(store):
    report = json.loads((store[0] / "_convert" / "quarantine.json").read_text())
    assert [(e["record_id"], e["reason"]) for e in report["records"]] == [(rid(*BAD), "malformed header")]


def test_measurements_table(store):
    out = store[0]
    attrs = StoreReader(out).attrs
    assert attrs[mimic.ATTR] == mimic.TABLE_KEY
    t = mimic.read_table(out, attrs)
    assert t["row"].tolist() == list(range(6)) and t["record_id"].tolist() == [rid(*s) for s in STUDIES]
    assert t["subject_id"].tolist() == [s[0] for s in STUDIES] and t["study_id"].tolist() == [s[1] for s in STUDIES]
    assert t["has_measurements"].tolist() == [k != MISSING for k in range(6)]
    for k in range(6):
        row = t.iloc[k]
        lines = REPORTS.get(k, [])
        assert row["report"] == "; ".join(lines)
        assert [row[f"report_{i}"] for i in range(18)] == lines + [""] * (18 - len(lines))
        assert row["rr_interval"] == ("" if k == MISSING else str(659 + k))
        assert row["cart_id"] == ("" if k == MISSING else str(6848296 + k))
        assert row["mm_ecg_time"] == ("" if k == MISSING else time_of(k))


def test_where_queries(store):
    out = str(store[0])
    q = _where.query(out, ["report~atrial fib"])
    assert (q["matches"], q["records"], q["record_ids"], q["rows"]) == (2, 6, [rid(*STUDIES[1]), rid(*STUDIES[3])], [1, 3])
    q = _where.query(out, ["report contains 'ATRIAL FIBRILLATION'", "subject_id=10000117"])
    assert q["record_ids"] == [rid(*STUDIES[3])]
    assert _where.query(out, ["has_measurements=False"])["record_ids"] == [rid(*STUDIES[MISSING])]
    assert _where.query(out, ["cart_id="])["record_ids"] == [rid(*STUDIES[MISSING])]
    assert _where.query(out, ["patient_id=10000032"], limit=1)["record_ids"] == [rid(*STUDIES[0])]
    assert _where.query(out, ["study_id=41225302", "report~^sinus rhythm; borderline"])["matches"] == 1
    assert _where.query(out, [])["matches"] == 6
    for bad, says in [("nope=1", "'nope'"), ("report~(", "regular expression"), ("report", "COLUMN~REGEX")]:
        with pytest.raises(BadArgumentError, match=says):
            _where.query(out, [bad])


def test_parse_condition():
    assert _where.parse_condition("report~a=b") == ("report", "~", "a=b")
    assert _where.parse_condition("  qrs_axis = 77 ") == ("qrs_axis", "=", "77")
    assert _where.parse_condition('report contains "left axis"') == ("report", "contains", "left axis")
    assert _where.parse_condition("cart_id=") == ("cart_id", "=", "")


def test_info_cli_where_and_export(store, tmp_path, capsys):
    out = str(store[0])
    assert main(["info", out, "--where", "report~atrial fibrillation"]) == 0
    text = capsys.readouterr().out
    assert "matches     2 of 6 records" in text and rid(*STUDIES[1]) in text and rid(*STUDIES[0]) not in text
    csv = tmp_path / "meta.csv.gz"
    assert main(["info", out, "--export-meta", str(csv)]) == 0
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert table["record_id"].tolist() == [rid(*s) for s in STUDIES]
    assert table["report_0"].tolist() == [REPORTS.get(k, [""])[0] for k in range(6)]
    assert table["ecg_time"].tolist() == [time_of(k) for k in range(6)]
    assert main(["info", out, "--where", "nope~x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err


def test_info_counts_records_without_measurements(store, capsys):
    facts = describe(store[0])
    assert facts["patients"] == 3 and facts["rows_without_patient"] == 0
    assert {k: facts["mimic"][k] for k in ("records", "studies", "without_measurements")} == {
        "records": 6, "studies": 6, "without_measurements": 1}
    assert main(["info", str(store[0])]) == 0
    assert "6 MIMIC-IV-ECG records, 6 studies; 1 without a machine_measurements row" in capsys.readouterr().out


@pytest.mark.parametrize("csv_name, column", [("record_list.csv", "study_id"), ("record_list.csv", "path"),
                                              ("machine_measurements.csv", "subject_id")])
def test_missing_csv_column_is_one_line(tree, tmp_path, capsys, csv_name, column):
    src = tmp_path / "mimic-iv-ecg"
    shutil.copytree(tree, src)
    table = pd.read_csv(src / csv_name, dtype=str)
    table.drop(columns=[column]).to_csv(src / csv_name, index=False)
    out = tmp_path / "s.zarr"
    assert main(["convert", str(src), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and column in err and csv_name in err
    assert not out.exists()  # checked before anything is written


def test_parent_folder_and_workers_give_the_same_store(store, tree, tmp_path):
    """data/ holding mimic-iv-ecg/, 2 worker processes: the same ids, rows and table."""
    out = tmp_path / "s.zarr"
    convert([tree.parent], out, workers=2, progress=False, shard_size=4)
    a, b = StoreReader(store[0]), StoreReader(out)
    for name in ("record_id", "source", "patient_id", "study_id", "ecg_time"):
        assert a.column(name).tolist() == b.column(name).tolist(), name
    np.testing.assert_array_equal(a.read(np.arange(6)).signals, b.read(np.arange(6)).signals)
    pd.testing.assert_frame_equal(mimic.read_table(store[0]), mimic.read_table(out))


def test_append_keeps_the_table_and_empty_ids(store, tmp_path):
    from tests.test_zarr_store.archives import write_archive

    out = tmp_path / "s.zarr"
    shutil.copytree(store[0], out)
    arch = write_archive(tmp_path / "other", n=2, bad=())
    convert([arch.root], out, progress=False, shard_size=4)
    r = StoreReader(out)
    assert len(r) == 8 and r.study_ids().tolist()[6:] == ["", ""] and r.column("ecg_time").tolist()[6:] == ["", ""]
    pd.testing.assert_frame_equal(mimic.read_table(out), mimic.read_table(store[0]))
    assert _where.query(str(out), ["study_id="])["record_ids"] == ["good000", "good001"]


def test_store_without_study_id_opens_and_says_so(store, tmp_path):
    out = tmp_path / "old.zarr"
    shutil.copytree(store[0], out)
    shutil.rmtree(out / "study_id")
    r = StoreReader(out)
    assert r.patient_ids().tolist() == [s[0] for s in STUDIES]
    with pytest.raises(MissingColumnError, match="predates study_id"):
        r.study_ids()


def test_rerun_of_an_interrupted_conversion_writes_the_same_table(store, tree, tmp_path, monkeypatch):
    """Stopped after the table was written but before the provenance (a kill there): the same command
    again ends with the store and table of an uninterrupted run, the table's rows not doubled."""
    import zarr_store.convert as conv

    out = tmp_path / "s.zarr"
    finish = conv._finish

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "_finish", stop)
    with pytest.raises(KeyboardInterrupt):
        convert([tree], out, progress=False, shard_size=4)
    monkeypatch.setattr(conv, "_finish", finish)
    summary = convert([tree], out, progress=False, shard_size=4)
    assert summary.converted == 6 and summary.shards_resumed == 2
    assert (out / mimic.TABLE_KEY).read_bytes() == (store[0] / mimic.TABLE_KEY).read_bytes()
    assert StoreReader(out).study_ids().tolist() == StoreReader(store[0]).study_ids().tolist()


def test_record_missing_from_record_list_gets_ids_from_its_path(tree, tmp_path):
    src = tmp_path / "mimic-iv-ecg"
    shutil.copytree(tree, src)
    listing = pd.read_csv(src / "record_list.csv", dtype=str)
    listing[listing["study_id"] != STUDIES[2][1]].to_csv(src / "record_list.csv", index=False)
    convert([src], tmp_path / "s.zarr", progress=False)
    r = StoreReader(tmp_path / "s.zarr")
    assert r.patient_ids().tolist() == [s[0] for s in STUDIES] and r.study_ids().tolist() == [s[1] for s in STUDIES]
    assert r.column("ecg_time").tolist() == [time_of(k) if k != 2 else "" for k in range(6)]
    assert mimic.read_table(tmp_path / "s.zarr")["report"].tolist()[2] == "Sinus bradycardia"
