"""zarr_store.convert on real records (oracle: wfdb.rdsamp, scipy's resample_poly) and on small
archives written with wfdb.wrsamp (bad records, resume after SIGKILL, determinism, fsspec, Dask)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import wfdb
import zarr
from scipy.signal import resample_poly

from tests.test_store.archives import BAD_KINDS, copy_subset, write_archive
from zarr_store.convert import convert
from zarr_store.errors import BadArgumentError

REPO = Path(__file__).resolve().parents[2]
ARRAYS = ("signals", "lead_mask", "valid_length", "window_index", "record_id", "source", "orig_rate", "age",
          "sex", "labels", "strat_fold")
PTBXL_N = 24


def load(store) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(store), mode="r")
    return {name: group[name][:] for name in ARRAYS}


def assert_same_arrays(a, b):
    for name in ARRAYS:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


DUPLICATE = "duplicate (same ecg_id at another rate)"


@pytest.fixture(scope="module")
def ptbxl_store(shared_data, tmp_path_factory):
    """The first PTBXL_N PTB-XL records at 500 Hz, 3 others at 100 Hz, and the 100 Hz copies of ECGs
    1 and 2 (duplicates of their 500 Hz files: skipped), symlinked with the csv, converted. Returns
    (store, summary, names of the converted records)."""
    tmp = tmp_path_factory.mktemp("ptbxl")
    src = shared_data / "ptbxl"
    names = [f"records500/00000/{i:05d}_hr" for i in range(1, PTBXL_N + 1)]
    names += [f"records100/00000/{i:05d}_lr" for i in range(PTBXL_N + 1, PTBXL_N + 4)]
    dups = [f"records100/00000/{i:05d}_lr" for i in (1, 2)]
    root = copy_subset(src, tmp / "ptbxl", names + dups, extra_files=["ptbxl_database.csv"])
    summary = convert([root], tmp / "store.zarr", progress=False, shard_size=8)
    return tmp / "store.zarr", summary, names


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
    assert set(a["source"]) == {"ptbxl"}


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


def test_windows_padding_and_clipping(tmp_path):
    arch = write_archive(tmp_path / "a", n=1, seconds=23.0, bad=())  # 2 full windows + a 3 s tail
    big = arch.root / "good000.hea"
    text = big.read_text().replace(" 1000.0(0)/mV", " 10(0)/mV")  # x100 in µV: 0.3-1.5 mV peaks overflow int16
    (arch.root / "big.hea").write_text(text.replace("good000", "big"))
    (arch.root / "big.dat").symlink_to(arch.root / "good000.dat")
    (arch.root / "RECORDS").write_text("big\ngood000\n")
    summary = convert([arch.root], tmp_path / "s.zarr", progress=False)
    a = load(tmp_path / "s.zarr")
    assert list(a["window_index"]) == [0, 1, 2, 0, 1, 2] and list(a["valid_length"]) == [5000, 5000, 1500] * 2
    full = np.rint(arch.signals["good000"].T * 1000)
    np.testing.assert_array_equal(np.concatenate(list(a["signals"][3:6]), axis=1)[:, :11500], full)
    assert not a["signals"][5, :, 1500:].any()
    big_uv = np.rint(arch.signals["good000"].T * 100000)
    assert summary.clipped_samples == int(((big_uv > 32767) | (big_uv < -32768)).sum()) > 0
    np.testing.assert_array_equal(np.concatenate(list(a["signals"][0:3]), axis=1)[:, :11500],
                                  np.clip(big_uv, -32768, 32767))


class _CountingBar:
    """Stands in for tqdm: records what the conversion reports."""
    seen: list = []

    def __init__(self, total=None, **_):
        self.total, self.n = total, 0
        _CountingBar.seen.append(self)

    def update(self, k=1):
        assert k >= 0
        self.n += k

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_progress_counts_every_record_once(tmp_path, monkeypatch):
    """In-process, the bar reaches its total: records counted as their group is encoded, bad ones at
    once, and those of shards an earlier (interrupted) run wrote when their marker is checked."""
    import tqdm.auto

    import zarr_store.tasks as tasks

    monkeypatch.setattr(tqdm.auto, "tqdm", _CountingBar)
    arch = write_archive(tmp_path / "arch", n=14, fs=360, seconds=12.0, bad=("flat", "truncated"))
    real, calls = tasks.ShardStream.finish, []

    def finish_then_fail(self, task):
        calls.append(task.shard)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted after the first shard is written
        return real(self, task)

    monkeypatch.setattr(tasks.ShardStream, "finish", finish_then_fail)
    with pytest.raises(KeyboardInterrupt):
        convert([arch.root], tmp_path / "s.zarr", shard_size=3)
    monkeypatch.setattr(tasks.ShardStream, "finish", real)
    summary = convert([arch.root], tmp_path / "s.zarr", shard_size=3)
    assert summary.shards_resumed == 1 and summary.rows == 28
    bar = _CountingBar.seen[-1]
    assert bar.total == 16 and bar.n == 16


_KILLED_RUN = """
import sys, time
import zarr_store.tasks as tasks
real = tasks.ShardFile.commit
def slow(*a, **k):
    time.sleep(0.15)  # slow shards, so that the kill lands mid-run
    return real(*a, **k)
tasks.ShardFile.commit = slow
from zarr_store.convert import convert
convert([sys.argv[1]], sys.argv[2], progress=False, shard_size=8)
"""


@pytest.mark.parametrize("trigger", ["_convert/*/shard-*.json", "_convert/pending.json"])
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, trigger):
    """Killed once a shard is done (or as soon as the run has begun), then re-run: same store."""
    arch = write_archive(tmp_path / "arch", n=40, fs=250, seconds=10.0, bad=("flat",))
    ref = tmp_path / "ref.zarr"
    convert([arch.root], ref, progress=False, shard_size=8)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(arch.root), str(out)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(trigger)):
            assert proc.poll() is None, "the conversion ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.07)  # somewhere inside a later shard
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "_convert" / "pending.json").exists()  # really killed before the end
    summary = convert([arch.root], out, progress=False, shard_size=8)
    assert not list(out.rglob(".tmp-*"))  # the killed writers' temporary files are gone
    assert summary.signal_bytes == convert([arch.root], ref, progress=False, shard_size=8).signal_bytes
    assert summary.shards_written >= 1
    if trigger.endswith("shard-*.json"):
        assert summary.shards_resumed >= 1
    assert summary.converted == 40 and summary.skipped == {"flat": 1}
    assert_same_arrays(load(out), load(ref))
    for shard in range(5):
        assert (out / f"signals/c/{shard}/0/0").read_bytes() == (ref / f"signals/c/{shard}/0/0").read_bytes()
    assert not (out / "_convert" / "pending.json").exists()
    again = convert([arch.root], out, progress=False, shard_size=8)  # finished: nothing to do
    assert again.converted == 0 and again.rows_total == 40 and "already converted" in again.note


@pytest.mark.parametrize("shard_size", [4, 3])  # 3: records of two rows straddle shards
def test_deterministic_workers_and_codecs(tmp_path, shard_size):
    """In-process (tasks.ShardStream) and worker processes (run_shard_task) write the same bytes."""
    arch = write_archive(tmp_path / "arch", n=12, fs=360, seconds=12.0, bad=("truncated",))
    one = convert([arch.root], tmp_path / "one.zarr", progress=False, shard_size=shard_size)
    two = convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=shard_size, workers=2)
    assert one.rows == two.rows == 24
    assert_same_arrays(load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr"))
    for shard in range(24 // shard_size):
        key = f"signals/c/{shard}/0/0"
        assert (tmp_path / "one.zarr" / key).read_bytes() == (tmp_path / "two.zarr" / key).read_bytes()
    if shard_size == 3:
        return
    base = load(tmp_path / "one.zarr")
    for codec in ("lz4", "delta"):
        s = convert([arch.root], tmp_path / f"{codec}.zarr", progress=False, shard_size=4, codec=codec)
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"{codec}.zarr" / "signals"))[:],
                                      base["signals"])
        assert s.compression_ratio > 1


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


def test_append_onto_a_corrupt_shard_names_it_and_leaves_nothing(tmp_path, capsys):
    a = write_archive(tmp_path / "a", n=5, bad=())
    b = write_archive(tmp_path / "b", n=3, seed=50, bad=())
    store = tmp_path / "s.zarr"
    convert([a.root], store, progress=False, shard_size=4)
    shard = store / "signals/c/1/0/0"  # holds row 4; the append continues in it
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index: its checksum no longer matches
    shard.write_bytes(bytes(data))
    from crema_fast.cli import main

    assert main(["convert", str(b.root), "--out", str(store), "--shard-size", "4", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "signals/c/1/0/0 (rows 4-4 of earlier conversions)" in err and "checksum" in err
    assert "Traceback" not in err and not list(store.rglob(".tmp-*"))
    assert shard.read_bytes() == bytes(data)  # left as it was


@pytest.mark.parametrize("workers", [1, 2])
def test_short_records_are_zero_padded(tmp_path, workers):
    """A record shorter than the window (here 4 s of 10) is one row, zero-padded, its valid length kept."""
    arch = write_archive(tmp_path / "arch", n=3, fs=500, seconds=4.0, bad=())
    convert([arch.root], tmp_path / "s.zarr", progress=False, shard_size=2, workers=workers)
    a = load(tmp_path / "s.zarr")
    assert list(a["valid_length"]) == [2000] * 3
    for row, name in enumerate(arch.good):
        np.testing.assert_array_equal(a["signals"][row, :, :2000], np.rint(arch.signals[name].T * 1000))
        assert not a["signals"][row, :, 2000:].any()


def test_long_records_keep_few_shard_files_open(tmp_path, monkeypatch):
    """A record spanning many shards: each shard file is finished at its last row, so the in-process
    converter holds at most two open (a 24 h Holter with small shards would otherwise open hundreds)."""
    import zarr_store.shard_writer as sw

    open_now, most = set(), [0]
    real_init, real_commit, real_abort = sw.ShardFile.__init__, sw.ShardFile.commit, sw.ShardFile.abort

    def init(self, *a, **k):
        real_init(self, *a, **k)
        open_now.add(id(self))
        most[0] = max(most[0], len(open_now))

    def done(real):
        def f(self):
            open_now.discard(id(self))
            return real(self)
        return f

    monkeypatch.setattr(sw.ShardFile, "__init__", init)
    monkeypatch.setattr(sw.ShardFile, "commit", done(real_commit))
    monkeypatch.setattr(sw.ShardFile, "abort", done(real_abort))
    arch = write_archive(tmp_path / "arch", n=3, fs=500, seconds=61.0, bad=())
    summary = convert([arch.root], tmp_path / "s.zarr", progress=False, shard_size=2)
    assert summary.rows == 21 and not open_now and most[0] <= 2
    two = convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=2, workers=2)
    assert two.rows == 21
    for shard in range(11):
        key = f"signals/c/{shard}/0/0"
        assert (tmp_path / "s.zarr" / key).read_bytes() == (tmp_path / "two.zarr" / key).read_bytes()


def test_memory_url_and_dask_local_cluster(tmp_path):
    from distributed import Client, LocalCluster

    arch = write_archive(tmp_path / "arch", n=6, fs=250, bad=("too short",))
    ref = convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    url = f"memory://store-{uuid.uuid4().hex}"
    mem = convert([arch.root], url, progress=False, shard_size=4, workers=2)
    assert mem.converted == ref.converted == 6 and mem.skipped == {"too short": 1}
    assert_same_arrays(load(url), load(tmp_path / "ref.zarr"))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster):
            dsk = convert([arch.root], tmp_path / "dask.zarr", progress=False, shard_size=4,
                          dask=cluster.scheduler_address)
    assert dsk.converted == 6
    assert_same_arrays(load(tmp_path / "dask.zarr"), load(tmp_path / "ref.zarr"))


def test_memory_output_with_dask_local_stays_in_process(tmp_path):
    """dask="local" (or workers > 1) into memory://: worker processes cannot see this process's memory
    file system, so the conversion runs in-process and the store holds every row."""
    arch = write_archive(tmp_path / "arch", n=5, fs=250, bad=("flat",))
    convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    url = f"memory://dask-{uuid.uuid4().hex}"
    got = convert([arch.root], url, progress=False, shard_size=4, dask="local", workers=2)
    assert got.converted == 5 and got.rows_total == 5 and "in-process" in got.note
    assert_same_arrays(load(url), load(tmp_path / "ref.zarr"))


def test_dask_local_starts_its_own_cluster(tmp_path):
    """dask="local": the Runner starts a LocalCluster of worker processes; same store as in-process."""
    arch = write_archive(tmp_path / "arch", n=5, fs=360, seconds=12.0, bad=("truncated",))
    ref = convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    got = convert([arch.root], tmp_path / "dask.zarr", progress=False, shard_size=4, dask="local")
    assert got.converted == ref.converted == 5 and got.skipped == ref.skipped == {"truncated": 1}
    assert got.shards_written == ref.shards_written == 3 and got.note == ""
    assert_same_arrays(load(tmp_path / "dask.zarr"), load(tmp_path / "ref.zarr"))


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


@pytest.mark.parametrize("fs", [500, 250])
def test_inverted_lead_is_stored_with_its_sign_flipped(tmp_path, monkeypatch, fs):
    """A signal named "-aVR" is -1 x aVR: the store holds aVR (fast path at 500 Hz, resampled at 250
    Hz, and through the wfdb fallback), oracle wfdb.rdsamp."""
    from tests.test_store.archives import ecg_like, write_record
    from zarr_store import wfdb_io

    sig = ecg_like(10 * fs, fs, 4, seed=3)
    write_record(tmp_path / "arch", "inv", sig, fs, names=("I", "II", "-aVR", "V1"))
    ref, fields = wfdb.rdsamp(str(tmp_path / "arch" / "inv"))
    assert fields["sig_name"][2] == "-aVR"
    expect = np.rint(resample_poly(ref * 1000, 500 // math.gcd(500, fs), fs // math.gcd(500, fs), axis=0)).T
    expect[2] *= -1
    for path in ("numpy", "wfdb"):
        if path == "wfdb":
            monkeypatch.setattr(wfdb_io, "NUMPY_FORMATS", frozenset())
        convert([tmp_path / "arch"], tmp_path / f"{path}.zarr", progress=False)
        a = load(tmp_path / f"{path}.zarr")
        assert list(a["lead_mask"][0]) == [True, True, False, True] + [False, False, True] + [False] * 5
        got = a["signals"][0][[0, 1, 3, 6]].astype(np.int64)
        assert np.abs(got - expect).max() <= (0 if fs == 500 else 1), path


def test_format_80_no_data_value_becomes_zero(tmp_path):
    """Format 80's no-data value is -128 (not -32768): the fast path (µV units, store rate) zeroes and
    counts it as rdsamp's NaN."""
    rng = np.random.default_rng(0)
    d = rng.integers(-127, 128, (5000, 12))
    d[100:130, 3] = -128
    d[7, 11] = -128
    (tmp_path / "arch").mkdir()
    wfdb.wrsamp("r80", fs=500, units=["uV"] * 12, sig_name=["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2",
                                                         "V3", "V4", "V5", "V6"],
                d_signal=d, fmt=["80"] * 12, adc_gain=[1.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path / "arch"))
    ref, _ = wfdb.rdsamp(str(tmp_path / "arch" / "r80"))
    summary = convert([tmp_path / "arch"], tmp_path / "s.zarr", progress=False)
    assert summary.invalid_samples == int(np.isnan(ref).sum()) == 31
    np.testing.assert_array_equal(load(tmp_path / "s.zarr")["signals"][0], np.nan_to_num(ref, nan=0.0).T)


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


def test_cli_convert_and_missing_folder(tmp_path, capsys):
    from crema_fast.cli import main

    assert main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]
    arch = write_archive(tmp_path / "arch", n=2, bad=("flat",))
    assert main(["convert", str(arch.root), "--out", str(tmp_path / "s.zarr"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "converted      2 records" in out and "flat 1" in out and "compression" in out
    assert math.isclose(len(load(tmp_path / "s.zarr")["record_id"]), 2)
    assert os.path.exists(tmp_path / "s.zarr" / "_convert" / "quarantine.json")


@pytest.mark.parametrize("flags,named", [(["--window", "0"], "--window"), (["--window", "0.0011"], "--window"),
                                         (["--shard-size", "0"], "--shard-size"), (["--workers", "0"], "--workers"),
                                         (["--rate", "-5"], "--rate")])
def test_cli_errors_name_the_flags(tmp_path, capsys, flags, named):
    from crema_fast.cli import main

    arch = write_archive(tmp_path / "arch", n=1, bad=())
    assert main(["convert", str(arch.root), "--out", str(tmp_path / "s.zarr"), "--no-progress", *flags]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.split("error: ", 1)[1].startswith(f"{named}: expected"), err
    assert "window_s" not in err and "shard_size" not in err


def test_cli_out_is_a_zarr_array_or_broken(tmp_path, capsys):
    """One line, exit 2, no traceback, for an out that is a Zarr array or has a broken zarr.json."""
    from crema_fast.cli import main

    arch = write_archive(tmp_path / "arch", n=1, bad=())
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(3,), dtype="int8")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    for out in ("array.zarr", "broken.zarr"):
        assert main(["convert", str(arch.root), "--out", str(tmp_path / out), "--no-progress"]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert "expected a crema-fast store or a new path" in err and "Traceback" not in err


def test_cli_subprocess_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crema_fast.cli", "convert", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "s.zarr")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert textwrap.shorten(proc.stderr, 200).startswith("crema-fast convert: error:")


def test_wfdb_fallback_gives_the_same_rows(tmp_path, monkeypatch):
    """Formats our numpy readers do not handle go through wfdb.rdrecord: same values."""
    from zarr_store import wfdb_io

    arch = write_archive(tmp_path / "arch", n=2, fs=360, bad=("flat",))
    convert([arch.root], tmp_path / "numpy.zarr", progress=False)
    monkeypatch.setattr(wfdb_io, "NUMPY_FORMATS", frozenset())
    summary = convert([arch.root], tmp_path / "wfdb.zarr", progress=False)
    assert summary.converted == 2 and summary.skipped == {"flat": 1}
    assert_same_arrays(load(tmp_path / "wfdb.zarr"), load(tmp_path / "numpy.zarr"))


@pytest.mark.parametrize("rows", [0, 3, 4096, 5000])
def test_direct_metadata_files_equal_zarrs(tmp_path, rows):
    """The metadata arrays a first conversion writes itself are the files zarr writes, byte for byte:
    chunks across a boundary, a padded last chunk, all-fill chunks left out (NaN, 0, -0.0, "")."""
    from zarr_store.meta_io import META_ARRAYS, direct_files as _direct_files, meta_spec as _meta_spec

    rng = np.random.default_rng(rows)
    cols = {
        "valid_length": rng.integers(0, 5000, rows).astype(np.int32),
        "window_index": np.zeros(rows, np.int32),  # all fill: no shard file
        "record_id": np.array([f"rec/{i}" for i in range(rows)]),
        "source": np.array(["ptbxl-\u00b5V"] * rows),
        "orig_rate": np.where(rng.random(rows) < 0.5, -0.0, 500.0).astype(np.float32),
        "age": np.where(np.arange(rows) < 4096, np.nan, 61.0).astype(np.float32),  # first chunk all NaN
        "sex": rng.integers(-1, 2, rows).astype(np.int8),
        "labels": np.array([""] * rows),
        "strat_fold": rng.integers(0, 11, rows).astype(np.int8),
        "lead_mask": rng.random((rows, 12)) < 0.9,
    }
    assert set(cols) == set(META_ARRAYS) | {"lead_mask"}
    for name, values in cols.items():
        ref = zarr.create_array(str(tmp_path / "ref"), name=name, **_meta_spec(name, rows))
        if rows:
            ref[:] = values
        files = _direct_files(name, values)
        assert files is not None, name
        ours = {key: b"".join(parts) for key, parts in files}
        theirs = {p.relative_to(tmp_path / "ref" / name).as_posix(): p.read_bytes()
                  for p in (tmp_path / "ref" / name).rglob("*") if p.is_file()}
        assert ours == theirs, name


def test_grow_writes_zarrs_zarr_json(tmp_path):
    """The signals shape a conversion sets itself is the zarr.json zarr's own resize writes."""
    from zarr_store.meta_io import grow as _grow
    from zarr_store.shard_writer import ChunkCodec, StoreIO

    filters, compressors = ChunkCodec("delta", blocksize=12 * 50 * 2).zarr_codecs()
    for name in ("ours", "ref"):
        zarr.create_array(str(tmp_path), name=name, shape=(0, 12, 50), dtype="int16", chunks=(1, 12, 50),
                          shards=(4, 12, 50), filters=filters, compressors=compressors, fill_value=0,
                          dimension_names=("row", "lead", "time"))
    zarr.open_array(str(tmp_path / "ref")).resize((9, 12, 50))
    _grow(StoreIO(str(tmp_path)), "ours", (9, 12, 50))
    assert (tmp_path / "ours" / "zarr.json").read_bytes() == (tmp_path / "ref" / "zarr.json").read_bytes()
    with pytest.raises(ValueError, match="shape"):
        _grow(StoreIO(str(tmp_path)), "ours", (8, 12, 50))


def test_store_zarr_json_files_are_zarrs(ptbxl_store, tmp_path):
    """The group, _convert group and signals zarr.json a conversion writes itself are byte for byte
    those zarr writes for the same attributes and array."""
    from zarr_store.shard_writer import ChunkCodec

    store, summary, _ = ptbxl_store
    ours = {key: (store / key).read_bytes() for key in ("zarr.json", "_convert/zarr.json", "signals/zarr.json")}
    ref = tmp_path / "ref.zarr"
    group = zarr.open_group(str(ref), mode="w", attributes=json.loads(ours["zarr.json"])["attributes"])
    group.create_group("_convert", attributes=json.loads(ours["_convert/zarr.json"])["attributes"])
    filters, compressors = ChunkCodec("zstd", blocksize=12 * 5000 * 2).zarr_codecs()
    group.create_array("signals", shape=(summary.rows_total, 12, 5000), dtype="int16", chunks=(1, 12, 5000),
                       shards=(8, 12, 5000), filters=filters, compressors=compressors, fill_value=0,
                       dimension_names=("row", "lead", "time"))
    assert ours == {key: (ref / key).read_bytes() for key in ours}
