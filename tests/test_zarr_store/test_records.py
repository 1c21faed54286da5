"""zarr_store.records through convert: one record -> store rows (windows, zero padding, clipping,
inverted leads, format 80's no-data value, the wfdb fallback); oracle wfdb.rdsamp on archives written
with wfdb.wrsamp."""

from __future__ import annotations

import math

import json

import numpy as np
import pytest
import wfdb
from scipy.signal import resample_poly

from tests.test_zarr_store.archives import assert_same_arrays, load, write_archive
from zarr_store.convert import convert


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


@pytest.mark.parametrize("fs", [500, 250])
def test_inverted_lead_is_stored_with_its_sign_flipped(tmp_path, monkeypatch, fs):
    """A signal named "-aVR" is -1 x aVR: the store holds aVR (fast path at 500 Hz, resampled at 250
    Hz, and through the wfdb fallback), oracle wfdb.rdsamp."""
    from tests.test_zarr_store.archives import ecg_like, write_record
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


def test_wfdb_fallback_gives_the_same_rows(tmp_path, monkeypatch):
    """Formats our numpy readers do not handle go through wfdb.rdrecord: same values."""
    from zarr_store import wfdb_io

    arch = write_archive(tmp_path / "arch", n=2, fs=360, bad=("flat",))
    convert([arch.root], tmp_path / "numpy.zarr", progress=False)
    monkeypatch.setattr(wfdb_io, "NUMPY_FORMATS", frozenset())
    summary = convert([arch.root], tmp_path / "wfdb.zarr", progress=False)
    assert summary.converted == 2 and summary.skipped == {"flat": 1}
    assert_same_arrays(load(tmp_path / "wfdb.zarr"), load(tmp_path / "numpy.zarr"))


def test_physically_absurd_records_are_quarantined(tmp_path, shared_data):
    """A gain of 1e30/mV (every sample rounds to 0 µV: once stored as an all-zero row), random bytes at
    200/mV (most samples beyond int16 µV) and random bytes in a .mat (no MATLAB header) each land in
    the report with a sentence saying what is wrong; the good records beside them convert."""
    from zarr_store.convert import REPORT_KEY

    arch = write_archive(tmp_path / "a", n=2, bad=())
    good = (arch.root / "good000.hea").read_text()
    (arch.root / "gain.hea").write_text(good.replace("good000", "gain").replace(" 1000.0(0)/mV", " 1e30(0)/mV"))
    (arch.root / "gain.dat").write_bytes((arch.root / "good000.dat").read_bytes())
    rng = np.random.default_rng(0)
    (arch.root / "noise.hea").write_text(good.replace("good000", "noise").replace(" 1000.0(0)/mV", " 200(0)/mV"))
    (arch.root / "noise.dat").write_bytes(rng.bytes((arch.root / "good000.dat").stat().st_size))
    chapman = shared_data / "other" / "chapman_shaoxing"
    (arch.root / "JS00001.hea").write_text((chapman / "JS00001.hea").read_text())
    (arch.root / "JS00001.mat").write_bytes(rng.bytes((chapman / "JS00001.mat").stat().st_size))
    # µV units in a 32-bit file: the ADC values are µV, and these lie far beyond int16 (were stored clipped)
    leads = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    (arch.root / "uv32.hea").write_text("uv32 12 500 5000\n" + "".join(f"uv32.dat 32 1(0)/uV 32 0 0 0 0 {n}\n"
                                                                         for n in leads))
    (arch.root / "uv32.dat").write_bytes(rng.integers(-2**30, 2**30, (5000, 12), dtype="<i4").tobytes())
    (arch.root / "RECORDS").unlink()
    convert([arch.root], tmp_path / "s.zarr", progress=False)
    report = {r["record_id"]: r for r in json.loads((tmp_path / "s.zarr" / REPORT_KEY).read_text())["records"]}
    assert {k: r["reason"] for k, r in report.items()} == {
        "gain": "implausible amplitude", "noise": "implausible amplitude", "JS00001": "not a MATLAB file",
        "uv32": "implausible amplitude"}
    assert "of samples lie beyond ±32.8 mV" in report["uv32"]["detail"] and "1/uV" in report["uv32"]["detail"]
    assert report["gain"]["detail"].startswith("every sample rounds to 0 µV") and "1e+30/mV" in report["gain"]["detail"]
    assert "of samples lie beyond ±32.8 mV" in report["noise"]["detail"]
    assert report["JS00001"]["detail"].startswith("JS00001.mat has no MATLAB v4 header (expected type in")
    a = load(tmp_path / "s.zarr")
    assert list(a["record_id"]) == ["good000", "good001"]
    np.testing.assert_array_equal(a["signals"][0], np.rint(arch.signals["good000"].T * 1000))


def test_bad_records_get_a_sentence_and_odd_names_survive(tmp_path):
    """Reasons that were bare exception text, a folder named x.hea that vanished, a non-UTF-8 file name
    that stopped the whole conversion, and a UTF-8 signal file name read as latin-1."""
    import os
    import shutil

    from zarr_store.convert import REPORT_KEY

    arch = write_archive(tmp_path / "a", n=1, bad=())
    root = arch.root
    (root / "RECORDS").unlink()
    good = (root / "good000.hea").read_text()

    def variant(name: str, text: str) -> None:
        (root / f"{name}.hea").write_text(text.replace("good000", name), encoding="utf-8")
        shutil.copy(root / "good000.dat", root / f"{name}.dat")

    variant("fmt999", good.replace(".dat 16 ", ".dat 999 "))
    head, rest = good.split("\n", 1)
    f = head.split()
    variant("huge", " ".join(f[:3] + ["999999999999"]) + "\n" + rest)
    variant("rate", " ".join(f[:2] + ["1e-30"] + f[3:]) + "\n" + rest)
    variant("unié", good)
    (root / "x.hea").mkdir()
    with open(os.fsencode(root) + b"/bad\xffname.hea", "wb") as fh:
        fh.write(good.replace("good000 ", "x ", 1).encode())
    convert([root], tmp_path / "s.zarr", progress=False)
    report = {r["record_id"]: (r["reason"], r["detail"])
              for r in json.loads((tmp_path / "s.zarr" / REPORT_KEY).read_text())["records"]}
    assert report == {
        "fmt999": ("unreadable", "signal format 999 is not a WFDB format (KeyError: '999')"),
        "huge": ("truncated", "huge.dat holds 120,000 bytes after offset 0, the header's 11,999,999,999,988 "
                              "samples need 23,999,999,999,976"),
        "rate": ("malformed header", "sampling frequency 1e-30 Hz: expected 1 to 1,000,000 Hz"),
        "x": ("unreadable", "x.hea is a folder, not a header file"),
    }
    a = load(tmp_path / "s.zarr")
    assert list(a["record_id"]) == ["bad\\xffname", "good000", "unié"]  # escaped as the bytes were
    np.testing.assert_array_equal(a["signals"][2], a["signals"][1])
