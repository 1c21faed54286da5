"""zarr_store.sources: discovery, database folders (the ``source`` and ``record_id`` of each record),
PTB-XL's table and header-comment metadata, checked against the files on disk and PTB-XL's csv."""

from __future__ import annotations

import math

from tests.test_zarr_store.archives import write_archive
from zarr_store import sources


def test_comment_metadata():
    cinc = sources.comment_meta(["Age: 85", "Sex: Male", "Dx: 164889003, 59118001"])
    assert (cinc.age, cinc.sex, cinc.labels) == (85.0, 0, "164889003,59118001")
    ptb = sources.comment_meta(["age: 81", "sex: female", "Reason for admission: MI"])
    assert (ptb.age, ptb.sex) == (81.0, 1)
    mit = sources.comment_meta(["69 M 1085 1629 x1", "Aldomet, Inderal"])
    assert (mit.age, mit.sex) == (69.0, 0)
    unknown = sources.comment_meta(["Age: Unknown", "Sex: ?"])
    assert math.isnan(unknown.age) and unknown.sex == -1
    assert (cinc.patient_id, ptb.patient_id, mit.patient_id) == ("", "", "")  # none of them names one


def test_patient_id_from_header_comments():
    assert sources.comment_meta(["Age: 50", "Patient ID: 17.0"]).patient_id == "17"
    assert sources.comment_meta(["subject_id: p1000-a"]).patient_id == "p1000-a"
    assert sources.comment_meta(["Patient: nan"]).patient_id == ""


def test_ptbxl_table_patient_ids_equal_the_csv(shared_data):
    import pandas as pd

    table = sources.load_ptbxl_table(str(shared_data / "ptbxl"))
    db = pd.read_csv(shared_data / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id")
    assert len(db) > 100 and db.patient_id.notna().all()
    for hr, lr, pid in zip(db.filename_hr, db.filename_lr, db.patient_id):
        assert table.rows[hr].patient_id == table.rows[lr].patient_id == str(int(pid)), hr


def test_discovery_records_file_and_walk(tmp_path, shared_data):
    arch = write_archive(tmp_path / "a", n=2, bad=("missing header",))
    assert sources.discover_records(arch.root) == sorted([*arch.good, *arch.bad])
    (arch.root / "RECORDS").unlink()
    assert sources.discover_records(arch.root) == arch.good  # the walk finds only what has a .hea
    assert sources.discover_records(shared_data / "other") == [
        "chapman_shaoxing/JS00001", "mitdb/100", "ptbdb/s0010_re", "qtdb/sel100"]
    walked = sources.discover_records(shared_data / "ptbxl" / "records100")
    assert len(walked) == 500 and walked[0] == "00000/00001_lr"


def test_ptbxl_table_found_from_a_subfolder(shared_data):
    table = sources.find_ptbxl_table(shared_data / "ptbxl" / "records500")
    row = table.lookup(shared_data / "ptbxl" / "records500" / "00000" / "00001_hr")
    assert row == sources.PtbxlRow("{'NORM': 100.0, 'LVOLT': 0.0, 'SR': 0.0}", 3, 56.0, 1, "15709")
    assert table.lookup(shared_data / "ptbxl" / "records100" / "00000" / "00001_lr") == row
    assert sources.find_ptbxl_table(shared_data / "other") is None


def _located(root, names=None):
    tree = sources.SourceTree(root)
    return {n: tree.locate(n) for n in (names or sources.discover_records(root))}


def test_records_are_named_after_their_database(shared_data):
    """The same (source, record_id) whichever folder is converted: data/, data/other, data/ptbxl, or
    data/ptbxl/records500 (PTB-XL's csv above it)."""
    whole = _located(shared_data)
    by_key = {n: (loc.source, loc.record_id) for n, loc in whole.items()}
    assert by_key["other/mitdb/100"] == ("mitdb", "100")
    assert by_key["other/chapman_shaoxing/JS00001"] == ("chapman_shaoxing", "JS00001")
    assert by_key["ptbxl/records500/00000/00001_hr"] == ("ptbxl", "records500/00000/00001_hr")
    assert {loc.source for loc in whole.values()} == {"ptbxl", "mitdb", "qtdb", "ptbdb", "chapman_shaoxing"}
    for sub in ("other", "ptbxl", "ptbxl/records500", "other/qtdb"):
        for name, loc in _located(shared_data / sub).items():
            assert (loc.source, loc.record_id) == by_key[f"{sub}/{name}"], (sub, name)
    # the csv below the root is found: PTB-XL's labels survive converting data/
    assert all(loc.table is not None for n, loc in whole.items() if n.startswith("ptbxl/"))
    assert all(loc.table is None for n, loc in whole.items() if n.startswith("other/"))


def test_source_fallbacks(tmp_path):
    """No marker: the top-level folder under the root, else the root's own name."""
    write_archive(tmp_path / "plain" / "cinc" / "g1", n=1, bad=(), records_file=False)
    write_archive(tmp_path / "plain", n=1, bad=(), records_file=False)
    got = {n: (loc.source, loc.record_id) for n, loc in _located(tmp_path / "plain").items()}
    assert got == {"cinc/g1/good000": ("cinc", "g1/good000"), "good000": ("plain", "good000")}
    (tmp_path / "plain" / "cinc" / "g1" / "RECORDS").write_text("good000\n")
    assert _located(tmp_path / "plain")["cinc/g1/good000"].source == "g1"  # the nearest marker wins


def test_posix_name_is_pathlibs():
    """RECORDS entries are named as pathlib normalises them, with or without the Path made."""
    from pathlib import Path

    from zarr_store.sources import _posix_name

    for name in ("a/b", "a//b", "./a", "a/./b", "a/.", ".", "a/b/", "../a", "a/../b", ".a/b.", "a.b/./c//d",
                 "records500/00000/00001_hr", "x/ y", "\u00b5/V", "a/.hidden", "./", "a/.."):
        assert _posix_name(name) == Path(name).as_posix(), name


def test_ptbxl_csv_parsed_once_per_content(tmp_path):
    """Two folders that link one csv share its parse; a csv rewritten in place is parsed again."""
    import os

    from zarr_store.sources import _parsed_ptbxl, load_ptbxl_table

    csv = tmp_path / "db.csv"
    csv.write_text("ecg_id,patient_id,age,sex,strat_fold,scp_codes,filename_lr,filename_hr\n"
                   "1,15709.0,56.0,1,3,\"{'NORM': 100.0}\",records100/00000/00001_lr,records500/00000/00001_hr\n")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "ptbxl_database.csv").symlink_to(csv)
    _parsed_ptbxl.cache_clear()
    a, b = load_ptbxl_table(str(tmp_path / "one")), load_ptbxl_table(str(tmp_path / "two"))
    assert (a.root, b.root) == (str(tmp_path / "one"), str(tmp_path / "two"))
    assert a.rows is b.rows and a.rows["records500/00000/00001_hr"].age == 56.0
    assert a.low_rate == {"records100/00000/00001_lr": "records500/00000/00001_hr"}
    assert _parsed_ptbxl.cache_info().misses == 1
    before = csv.stat()
    new = tmp_path / "db.csv.new"  # replaced as rsync -a and tar do: same size, same mtime, a new file
    new.write_text(csv.read_text().replace(",56.0,", ",57.0,"))
    os.utime(new, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(new, csv)
    assert load_ptbxl_table(str(tmp_path / "one")).rows["records500/00000/00001_hr"].age == 57.0
    assert load_ptbxl_table(str(tmp_path / "missing")) is None
