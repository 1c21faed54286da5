"""Array inputs of convert (zarr_store.array_sources, hdf5_io, array_records, array_convert): CODE-15%
folders and generic HDF5 / .npy / .npz arrays, against a direct h5py / numpy read of the same items.

Layouts the tests write (tmp_path):
- CODE-15%: ``exams_part0.hdf5``, ``exams_part1.hdf5``, each with ``tracings`` (n, 4096, 12) float32 mV
  at 400 Hz, the signal (7-10 s) centred between zeros, and ``exam_id`` (n,) int64; ``exams.csv``
  with CODE-15%'s columns (exam_id, age, is_male, nn_predicted_age, 1dAVb, RBBB, LBBB, SB, ST, AF,
  patient_id, death, timey, normal_ecg, trace_file), booleans written True / False.
- Generic: ``x.h5`` dataset ``ecg`` (n, 12, T) with a ``leads`` attribute and an ``ids`` dataset;
  ``x.npy`` (n, T, 12).
Limb leads obey Einthoven / Goldberger (III = II - I, ...), as a device's derived leads do.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import zarr
from scipy.signal import resample_poly

from tests.test_zarr_store.archives import assert_same_arrays, load
from zarr_store.array_sources import ArrayOptions
from zarr_store.convert import convert
from zarr_store.errors import BadArgumentError

LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")


def _ecg(rng, n: int, scale: float = 1.0) -> np.ndarray:
    """(n, 12) float32: I and II smooth random waves (mV), the other limb leads derived from them."""
    t = np.arange(n)[:, None]
    waves = sum(rng.normal(0, 0.5, 2) * np.sin(2 * np.pi * rng.uniform(0.5, 20, 2) * t / 400 + rng.uniform(0, 6, 2))
                for _ in range(4))
    i, ii = waves[:, 0] + rng.normal(0, 0.02, n), waves[:, 1] + rng.normal(0, 0.02, n)
    iii = ii - i
    chest = rng.normal(0, 0.3, (n, 6)).cumsum(0) * 0.05
    x = np.column_stack([i, ii, iii, -(i + ii) / 2, (i - iii) / 2, (ii + iii) / 2, chest])
    return (x * scale).astype(np.float32)


def _tracings(rng, n: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    out, spans = np.zeros((n, 4096, 12), np.float32), []
    for k in range(n):
        valid = int(rng.integers(2800, 4001))
        a = (4096 - valid) // 2
        out[k, a : a + valid] = _ecg(rng, valid)
        spans.append((a, a + valid))
    return out, spans


def write_code15(folder, sizes=(5, 4), seed=0, drop_column=None):
    """A CODE-15%-shaped folder; returns {exam_id: (part file, index, valid span)} and the csv rows."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    where, rows, exam = {}, [], 1000
    for p, n in enumerate(sizes):
        x, spans = _tracings(rng, n)
        ids = np.arange(exam, exam + n, dtype=np.int64) * 7  # not sorted by value across parts
        exam += n
        with h5py.File(folder / f"exams_part{p}.hdf5", "w") as f:
            f["tracings"], f["exam_id"] = x, ids
        for k, e in enumerate(ids):
            where[str(e)] = (folder / f"exams_part{p}.hdf5", k, spans[k])
            flags = rng.random(6) < 0.3
            rows.append({"exam_id": e, "age": int(rng.integers(18, 90)), "is_male": bool(rng.random() < 0.5),
                         "nn_predicted_age": 50.0, **dict(zip(LABELS, flags)), "patient_id": 90000 + int(e) % 5,
                         "death": False, "timey": 1.0, "normal_ecg": not flags.any(),
                         "trace_file": f"exams_part{p}.hdf5"})
    df = pd.DataFrame(rows).drop(columns=[drop_column] if drop_column else [])
    df.to_csv(folder / "exams.csv", index=False)
    return where, df


def expected_row(x: np.ndarray, uv: float, up: int, down: int, window: int = 5000) -> np.ndarray:
    """The store row of one item read directly: (t, 12) units -> µV float64, resampled, int16 (12, window)."""
    y = x.astype(np.float64) * uv
    if (up, down) != (1, 1):
        y = resample_poly(y, up, down, axis=0)
    y = np.clip(np.rint(y), -32768, 32767).astype(np.int16).T
    row = np.zeros((12, window), np.int16)
    row[:, : min(window, y.shape[1])] = y[:, :window]
    return row


@pytest.fixture(scope="module")
def code15(tmp_path_factory):
    folder = tmp_path_factory.mktemp("c15") / "code15"
    where, df = write_code15(folder)
    store = folder.parent / "s.zarr"
    summary = convert([folder], store, shard_size=4, progress=False)
    return folder, where, df, store, summary


def test_code15_rows_equal_a_direct_read(code15):
    folder, where, df, store, summary = code15
    g = zarr.open_group(str(store), mode="r")
    assert summary.converted == len(where) and g["signals"].shape == (len(where), 12, 5000)
    ids = g["record_id"][:].tolist()
    assert sorted(ids) == sorted(where) and ids[:5] == [str(7 * e) for e in range(1000, 1005)]  # part order
    for row, exam in enumerate(ids):
        path, k, (a, b) = where[exam]
        with h5py.File(path, "r") as f:
            x = f["tracings"][k]
        np.testing.assert_array_equal(g["signals"][row], expected_row(x[a:b], 1000.0, 5, 4), err_msg=exam)
        assert g["valid_length"][row] == min(5000, -(-(b - a) * 5 // 4))  # the padding left out
    assert (g["orig_rate"][:] == 400).all() and (g["source"][:] == "code15").all()
    assert g["lead_mask"][:].all()


def test_code15_padding_found(code15):
    folder, where, _, store, _ = code15
    g = zarr.open_group(str(store), mode="r")
    # one exam by hand: its valid span was written as (a, b); 3 s of padding would be 1500 rows of zeros
    exam = g["record_id"][:].tolist()[0]
    _, _, (a, b) = where[exam]
    n_out = -(-(b - a) * 5 // 4)
    row = g["signals"][0]
    assert g["valid_length"][0] == n_out and not row[:, n_out:].any() and row[:, :3].any()


def test_code15_labels_and_ids_from_csv(code15):
    _, where, df, store, _ = code15
    g = zarr.open_group(str(store), mode="r")
    table = df.set_index(df["exam_id"].astype(str))
    for row, exam in enumerate(g["record_id"][:].tolist()):
        r = table.loc[exam]
        assert g["age"][row] == r["age"]
        assert g["sex"][row] == (0 if r["is_male"] else 1)
        assert g["labels"][row] == ",".join(name for name in LABELS if r[name])
        assert g["patient_id"][row] == str(r["patient_id"])


def test_missing_csv_column_is_one_line(tmp_path):
    folder = tmp_path / "code15"
    write_code15(folder, sizes=(2,), drop_column="RBBB")
    with pytest.raises(BadArgumentError) as exc:
        convert([folder], tmp_path / "s.zarr", progress=False)
    text = str(exc.value)
    assert "\n" not in text and "RBBB" in text and "exams.csv" in text
    assert not (tmp_path / "s.zarr").exists()  # checked before anything is written


def test_truncated_part_quarantined(tmp_path):
    folder = tmp_path / "code15"
    where, _ = write_code15(folder, sizes=(3, 3))
    part = folder / "exams_part1.hdf5"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    store = tmp_path / "s.zarr"
    summary = convert([folder], store, shard_size=4, progress=False)
    g = zarr.open_group(str(store), mode="r")
    assert g["record_id"][:].tolist() == [e for e, w in where.items() if w[0].name == "exams_part0.hdf5"]
    report = json.loads((store / "_convert" / "quarantine.json").read_text())
    [bad] = report["records"]
    assert bad["record_id"] == "exams_part1.hdf5" and bad["reason"] == "truncated" and bad["detail"]
    assert summary.skipped == {"truncated": 1}


def test_lead_order_checked(tmp_path):
    folder = tmp_path / "code15"
    where, _ = write_code15(folder, sizes=(3,))
    part = folder / "exams_part0.hdf5"
    with h5py.File(part, "r+") as f:
        x = f["tracings"][:]
        f["tracings"][:] = x[:, :, [1, 0, *range(2, 12)]]  # I and II swapped
    with pytest.raises(BadArgumentError, match="--leads") as exc:
        convert([folder], tmp_path / "a.zarr", progress=False)
    assert "\n" not in str(exc.value)
    store = tmp_path / "b.zarr"
    convert([folder], store, leads="II,I,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(","), progress=False)
    g = zarr.open_group(str(store), mode="r")
    path, k, (a, b) = where[g["record_id"][:].tolist()[0]]
    np.testing.assert_array_equal(g["signals"][0], expected_row(x[k, a:b], 1000.0, 5, 4))


def _generic_h5(path, rng, n=7, t=6000):
    """(n, 12, t) at 500 Hz in mV, leads named in an attribute, ids in a dataset; the 4th item all
    zeros (flat, quarantined)."""
    x = np.stack([_ecg(rng, t).T for _ in range(n)])
    x[3] = 0
    with h5py.File(path, "w") as f:
        f["ecg"] = x
        f["ecg"].attrs["leads"] = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        f["ids"] = np.array([f"rec{k:02d}".encode() for k in range(n)])
    return x


def test_generic_hdf5_and_workers(tmp_path):
    """(N, leads, T) at the store rate: 12 s items are two rows (10 s + a 2 s tail); workers=2 and the
    in-process run write the same store, and so does a Dask LocalCluster of 2."""
    x = _generic_h5(tmp_path / "x.h5", np.random.default_rng(1))
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    kw = dict(input_rate=500, units="mV", shard_size=3, progress=False)
    s1 = convert([f"{tmp_path / 'x.h5'}:ecg"], one, **kw)
    convert([f"{tmp_path / 'x.h5'}:ecg"], two, workers=2, **kw)
    assert_same_arrays(load(one), load(two))
    convert([f"{tmp_path / 'x.h5'}:ecg"], tmp_path / "dask.zarr", dask="local", workers=2, **kw)
    assert_same_arrays(load(one), load(tmp_path / "dask.zarr"))
    g = zarr.open_group(str(one), mode="r")
    assert s1.skipped == {"flat": 1} and g["record_id"][:].tolist() == [f"rec{k:02d}" for k in range(7) if k != 3
                                                                         for _ in range(2)]
    assert g["window_index"][:2].tolist() == [0, 1] and g["valid_length"][:2].tolist() == [5000, 1000]
    for row in range(0, 12, 2):
        k = int(g["record_id"][:].tolist()[row][3:])
        full = expected_row(x[k].T, 1000.0, 1, 1, window=6000)
        np.testing.assert_array_equal(g["signals"][row], full[:, :5000])
        np.testing.assert_array_equal(g["signals"][row + 1][:, :1000], full[:, 5000:])


def test_npy_units_and_rate(tmp_path):
    """(N, T, leads) in volts at 250 Hz: scaled by 1e6 and resampled 250 -> 500 Hz; leads from --leads."""
    rng = np.random.default_rng(2)
    x = np.stack([_ecg(rng, 2500) / 1000 for _ in range(3)])  # V
    np.save(tmp_path / "x.npy", x)
    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    with pytest.raises(BadArgumentError, match="input-rate"):
        convert([tmp_path / "x.npy"], tmp_path / "a.zarr", leads=leads, progress=False)
    store = tmp_path / "s.zarr"
    convert([tmp_path / "x.npy"], store, input_rate=250, leads=leads, units="V", progress=False)
    g = zarr.open_group(str(store), mode="r")
    assert g["record_id"][:].tolist() == ["0", "1", "2"]
    for k in range(3):
        np.testing.assert_array_equal(g["signals"][k], expected_row(x[k], 1e6, 2, 1))


def test_code15_from_urls_equals_local(code15, tmp_path):
    """A CODE-15% folder and an HDF5 file read through fsspec URLs: memory:// (in-process; workers=2
    asked for, noted) and local:// (a URL every local worker process can open: the workers' path)
    give the local conversion's arrays."""
    import fsspec

    folder, _, _, store, _ = code15
    mem = fsspec.filesystem("memory")
    mem.put(str(folder), "/u/code15", recursive=True)
    try:
        a = tmp_path / "mem.zarr"
        summary = convert(["memory://u/code15"], a, shard_size=4, workers=2, progress=False)
        assert "memory://" in summary.note and summary.converted == 9
        assert_same_arrays(load(a), load(store))
        b = tmp_path / "local.zarr"
        convert([f"local://{folder}"], b, shard_size=4, workers=2, progress=False)
        assert_same_arrays(load(b), load(store))
        convert([f"file://{folder}/"], tmp_path / "file.zarr", shard_size=4, progress=False)  # a local path
        assert_same_arrays(load(tmp_path / "file.zarr"), load(store))
        part = sorted(folder.glob("exams_part*.hdf5"))[0]
        c = tmp_path / "h5.zarr"
        convert([f"memory://u/code15/{part.name}:tracings"], c, input_rate=400, units="mV", progress=False,
                leads="I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(","))
        d = tmp_path / "h5local.zarr"
        convert([f"{part}:tracings"], d, input_rate=400, units="mV", progress=False,
                leads="I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(","))
        assert_same_arrays(load(c), load(d))
        mem.pipe("/u/code15/x.npy", b"")
        with pytest.raises(BadArgumentError, match="local files"):
            convert(["memory://u/code15/x.npy"], tmp_path / "npy.zarr", input_rate=400, progress=False)
    finally:
        mem.rm("/u/code15", recursive=True)


def test_killed_then_rerun_equals_uninterrupted(tmp_path):
    folder = tmp_path / "code15"
    write_code15(folder, sizes=(12, 12), seed=3)
    ref = tmp_path / "ref.zarr"
    convert([folder], ref, shard_size=2, progress=False)
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-m", "crema_fast.cli", "convert", str(folder), "--out", str(store),
           "--shard-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    shards = store / "signals" / "c"
    while proc.poll() is None and not (shards.is_dir() and sum(1 for _ in shards.iterdir()) >= 4):
        time.sleep(0.005)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert killed  # else the kill tested nothing
    assert not (store / "record_id").exists()  # killed among the shards, before the metadata
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_arrays(load(store), load(ref))
    conv = json.loads((store / "zarr.json").read_text())["attributes"]["conversions"]
    assert len(conv) == 1 and conv[0]["shards_resumed"] >= 1


def test_nan_and_clipped_samples_counted(tmp_path):
    """No-data (NaN) samples become 0 and are counted, samples beyond int16 µV are clipped and counted,
    an all-NaN item is quarantined: as for WFDB records."""
    rng = np.random.default_rng(4)
    x = np.stack([_ecg(rng, 5000) for _ in range(3)]).astype(np.float64)  # mV at 500 Hz
    x[0, 100:110, 3] = np.nan
    x[1, 2000:2005, 7] = 40.0  # 40 mV: beyond the store's ±32.8 mV
    x[2] = np.nan
    np.savez(tmp_path / "x.npz", ecg=x, names=np.array(["a", "b", "c"]))
    store = tmp_path / "s.zarr"
    summary = convert([f"{tmp_path / 'x.npz'}:ecg"], store, input_rate=500, units="mV", ids="names",
                      leads="I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(","), progress=False)
    assert summary.skipped == {"all-NaN": 1} and summary.invalid_samples == 10 and summary.clipped_samples == 5
    g = zarr.open_group(str(store), mode="r")
    assert g["record_id"][:].tolist() == ["a", "b"]
    np.testing.assert_array_equal(g["signals"][0], expected_row(np.nan_to_num(x[0]), 1000.0, 1, 1))
    np.testing.assert_array_equal(g["signals"][1], expected_row(x[1], 1000.0, 1, 1))
    assert (g["signals"][1][7, 2000:2005] == 32767).all()


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_member_mapped_when_stored(tmp_path, save):
    """An .npz member that np.savez stored as it is gets memory-mapped inside the zip (never whole in
    memory); a compressed one is loaded. Both convert to the rows of the array itself."""
    from zarr_store import hdf5_io

    rng = np.random.default_rng(6)
    x = np.stack([_ecg(rng, 5000) for _ in range(3)]).astype(np.float32)  # mV at 500 Hz, (N, T, leads)
    save(tmp_path / "x.npz", first=np.arange(4), ecg=x)  # another member before it: a nonzero offset
    try:
        member = hdf5_io._numpy_array(str(tmp_path / "x.npz"), "ecg", "npz")
        assert isinstance(member, np.memmap) == (save is np.savez)
        np.testing.assert_array_equal(member, x)
    finally:
        hdf5_io.close_all()
    leads = "I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(",")
    store = tmp_path / "s.zarr"
    summary = convert([f"{tmp_path / 'x.npz'}:ecg"], store, input_rate=500, units="mV", progress=False, leads=leads)
    assert summary.converted == 3
    g = zarr.open_group(str(store), mode="r")
    for i in range(3):
        np.testing.assert_array_equal(g["signals"][i], expected_row(x[i].astype(np.float64), 1000.0, 1, 1))
    # no member named: the one 3-D member, found from the headers once (each block read used to load it)
    inp = hdf5_io.open_generic(str(tmp_path / "x.npz"), None, ArrayOptions(500.0, tuple(leads), None, "mV"))
    try:
        assert inp.parts[0].dataset == "ecg" and inp.source == "x.npz"
        assert isinstance(hdf5_io._OPEN[f"{tmp_path / 'x.npz'}:ecg"], np.memmap) == (save is np.savez)
    finally:
        hdf5_io.close_all()
    convert([tmp_path / "x.npz"], tmp_path / "t.zarr", input_rate=500, units="mV", progress=False, leads=leads)
    a, b = load(tmp_path / "t.zarr"), load(store)
    for name in ("signals", "record_id", "valid_length"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert set(a["source"].tolist()) == {"x.npz"}


def test_npz_written_otherwise(tmp_path):
    """Members not named NAME.npy (a zip written by another tool) and big-endian data convert to the
    rows of the array itself."""
    import zipfile

    rng = np.random.default_rng(7)
    x = np.stack([_ecg(rng, 5000) for _ in range(2)]).astype(">f4")  # big-endian mV
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        with z.open("ecg", "w") as f:
            np.lib.format.write_array(f, x)
    store = tmp_path / "s.zarr"
    summary = convert([tmp_path / "x.npz"], store, input_rate=500, units="mV", progress=False,
                      leads="I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(","))
    assert summary.converted == 2
    g = zarr.open_group(str(store), mode="r")
    for i in range(2):
        np.testing.assert_array_equal(g["signals"][i], expected_row(x[i].astype(np.float64), 1000.0, 1, 1))


def test_direct_kernels_equal_pack_then_unpack():
    """At the store rate the rows skip the float64 copy (_direct; _direct_plain when the twelve columns
    are the leads in order): the same int16 values and no-data / clipped counts as _pack then _unpack,
    on items with NaN, samples beyond int16 µV, -0.0 and exact .5 µV steps, for the leads in order, in
    another order with one inverted, and a subset."""
    from zarr_store.array_records import _direct, _direct_plain, _pack, _unpack

    rng = np.random.default_rng(8)
    x = (rng.standard_normal((5, 300, 12)) * 8).astype(np.float32)  # mV
    x[1, 10:20, 4] = np.nan
    x[2, :5] = -0.0
    x[3, 7, :] = np.float32(0.0625)  # 62.5 µV exactly: rounds half to even (62)
    x[4, 50:60, ::2] = 40.0  # 40 mV: clipped in every lead set below
    item, offset, n = np.array([0, 1, 2, 3, 4]), np.array([0, 3, 0, 10, 1]), np.array([300, 290, 250, 280, 299])
    for sel, present, sign in [(np.arange(12), np.arange(12), np.ones(12)),
                               (np.arange(12)[::-1].copy(), np.arange(12), np.r_[-1.0, np.ones(11)]),
                               (np.array([0, 1, 6]), np.array([0, 1, 6]), np.ones(3))]:
        want = np.zeros((5, 12, 300), np.int16)
        buf = np.empty((300, len(sel) * 5))
        want_invalid = _pack(x, item, offset, n, sel, 1000.0, sign, buf)
        want_clipped = _unpack(buf, n, present, want)
        got = np.zeros((5, 12, 300), np.int16)
        invalid, clipped = _direct(x, item, offset, n, sel, present, 1000.0, sign, got)
        np.testing.assert_array_equal(got, want)
        assert invalid.tolist() == want_invalid.tolist() and clipped.tolist() == want_clipped.tolist()
        assert want_invalid[1] == (10 if 4 in sel else 0) and want_clipped.sum() > 0
        if len(sel) == 12 and (sel == np.arange(12)).all() and (sign == 1).all():
            plain = np.zeros((5, 12, 300), np.int16)
            invalid, clipped = _direct_plain(x, item, offset, n, 1000.0, plain)
            np.testing.assert_array_equal(plain, want)
            assert invalid.tolist() == want_invalid.tolist() and clipped.tolist() == want_clipped.tolist()


def test_cli_generic_flags(tmp_path, capsys):
    """crema-fast convert FILE.npy --input-rate --leads --layout --units: the flags reach the converter,
    and an error names the flag in one line."""
    from crema_fast.cli import main

    rng = np.random.default_rng(5)
    x = np.stack([_ecg(rng, 5000).T * 1000 for _ in range(2)])  # (N, leads, T) µV at 500 Hz
    np.save(tmp_path / "x.npy", x)
    base = ["convert", str(tmp_path / "x.npy"), "--no-progress", "--leads", "I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6"]
    assert main([*base, "--out", str(tmp_path / "a.zarr"), "--units", "furlongs", "--input-rate", "500"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--units" in err[0] and "furlongs" in err[0]
    assert main([*base, "--out", str(tmp_path / "s.zarr"), "--input-rate", "500", "--layout", "NLT",
                 "--units", "uV"]) == 0
    assert "converted      2 records" in capsys.readouterr().out
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    np.testing.assert_array_equal(g["signals"][1], expected_row(x[1].T, 1.0, 1, 1))


def test_duplicate_ids_and_append(tmp_path):
    """An id met twice in one conversion is converted once (the second quarantined); appending the
    same items again (another conversion of them) skips them as already in the store."""
    rng = np.random.default_rng(6)
    x = np.stack([_ecg(rng, 5000) for _ in range(3)])
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ids.npy", np.array(["p", "q", "p"]))
    kw = dict(input_rate=500, leads="I,II,III,aVR,aVL,aVF,V1,V2,V3,V4,V5,V6".split(","), ids=str(tmp_path / "ids.npy"),
              progress=False)
    store = tmp_path / "s.zarr"
    first = convert([tmp_path / "x.npy"], store, units="mV", **kw)
    assert first.converted == 2 and first.skipped == {"duplicate id": 1}
    again = convert([tmp_path / "x.npy"], store, units="uV", **kw)  # other parameters: a new conversion
    assert again.converted == 0 and again.skipped == {"already in store": 3}
    g = zarr.open_group(str(store), mode="r")
    assert g["record_id"][:].tolist() == ["p", "q"]
    np.testing.assert_array_equal(g["signals"][1], expected_row(x[1], 1000.0, 1, 1))
