"""zarr_store.records through convert: one record -> store rows (windows, zero padding, clipping,
inverted leads, format 80's no-data value, the wfdb fallback); oracle wfdb.rdsamp on archives written
with wfdb.wrsamp."""

from __future__ import annotations

import math

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
