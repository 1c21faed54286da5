"""zarr_store.wfdb_io against wfdb (the oracle): header parsing, the numpy readers, lead mapping."""

from __future__ import annotations

import numpy as np
import pytest
import wfdb

from tests.test_zarr_store.archives import ecg_like, write_record
from zarr_store import wfdb_io
from zarr_store.errors import RecordError

REAL = ["other/mitdb/100", "other/ptbdb/s0010_re", "other/chapman_shaoxing/JS00001", "other/qtdb/sel100",
        "ptbxl/records500/00000/00001_hr", "ptbxl/records100/00000/00007_lr"]


@pytest.mark.parametrize("name", REAL)
def test_real_headers_and_samples_match_wfdb(shared_data, name):
    path = shared_data / name
    header = wfdb_io.read_header(f"{path}.hea")
    ref = wfdb.rdrecord(str(path), physical=False)
    assert header.fs == ref.fs and header.sig_len == ref.sig_len and header.n_sig == ref.n_sig
    assert [s.description for s in header.signals] == ref.sig_name
    assert [s.gain for s in header.signals] == list(ref.adc_gain)
    assert [s.baseline for s in header.signals] == list(ref.baseline)
    assert [s.units for s in header.signals] == ref.units
    n = wfdb_io.check_files(header, path.parent)
    digital = wfdb_io.read_digital(header, path.parent, n)
    np.testing.assert_array_equal(digital, ref.d_signal)


def test_header_oddities():
    text = ("# leading comment\r\n\r\nrec 3 250/360(0) 1000 10:00:00\r\n"
            "rec.dat 212 200(5)/uV 11 1024 1 2 0 MLII\r\n\r\n"
            "rec.dat 212 0 11 7 1 2 0 lead V5 modified\r\n"
            "x.mat 16+24 1000/mV\r\n#Dx: 1, 2\n")
    h = wfdb_io.parse_header(text)
    assert (h.name, h.n_sig, h.fs, h.counter_freq, h.sig_len) == ("rec", 3, 250.0, 360.0, 1000)
    a, b, c = h.signals
    assert (a.fmt, a.gain, a.baseline, a.units, a.adc_zero, a.description) == (212, 200.0, 5, "uV", 1024, "MLII")
    assert a.uv_per_unit == pytest.approx(1 / 200)
    assert (b.gain, b.baseline, b.description) == (200.0, 7, "lead V5 modified")  # gain 0 = 200, baseline = adc zero
    assert (c.fmt, c.offset, c.gain, c.units) == (16, 24, 1000.0, "mV")
    assert h.files == ("rec.dat", "rec.dat", "x.mat")
    assert wfdb_io.signal_groups(h) == {"rec.dat": (0, 1), "x.mat": (2,)}
    assert h.comments == ("leading comment", "Dx: 1, 2")


@pytest.mark.parametrize("text", ["", "# only a comment", "rec", "rec x 500 10", "rec 2 500 10\nr.dat 16",
                                  "rec 1 fast 10\nr.dat 16", "rec 1 500 10\nr.dat abc", "rec 1 500 10\nr.dat 16 g/mV"])
def test_malformed_headers_raise(text):
    with pytest.raises(RecordError, match="malformed header"):
        wfdb_io.parse_header(text)


@pytest.mark.parametrize("fmt", ["16", "212", "80", "24", "32"])
def test_formats_match_wfdb(tmp_path, fmt):
    sig = ecg_like(1001, 500, 3, seed=int(fmt))  # odd length: a half-filled 212 byte triple at the end
    gain = 50.0 if fmt == "80" else 1000.0  # format 80 holds 8 bits
    write_record(tmp_path, "r", sig, 500, names=("I", "II", "V1"), fmt=fmt, gain=gain)
    header = wfdb_io.read_header(tmp_path / "r.hea")
    assert header.numpy_readable
    ref = wfdb.rdrecord(str(tmp_path / "r"), physical=False)
    np.testing.assert_array_equal(wfdb_io.read_digital(header, tmp_path), ref.d_signal)


def test_truncated_and_missing_files(tmp_path):
    write_record(tmp_path, "r", ecg_like(500, 500, 2, 0), 500, names=("I", "II"))
    header = wfdb_io.read_header(tmp_path / "r.hea")
    data = (tmp_path / "r.dat").read_bytes()
    (tmp_path / "r.dat").write_bytes(data[:-3])
    # one message whichever check finds it: the file's size before reading, or the read itself
    said = f"^truncated: r.dat holds {len(data) - 3:,} bytes after offset 0, the header's 1,000 samples need {len(data):,}$"
    with pytest.raises(RecordError, match=said):
        wfdb_io.check_files(header, tmp_path)
    with pytest.raises(RecordError, match=said):
        wfdb_io.read_digital(header, tmp_path)
    # a header announcing 10^12 frames: said before anything is allocated (was a bare MemoryError)
    huge = (tmp_path / "r.hea").read_text().replace(" 500 500", " 500 1000000000000", 1)
    (tmp_path / "r.hea").write_text(huge)
    header = wfdb_io.read_header(tmp_path / "r.hea")
    assert header.sig_len == 10**12
    with pytest.raises(RecordError, match=f"^truncated: r.dat holds {len(data) - 3:,} bytes after offset 0, "
                                          f"the header's 2,000,000,000,000 samples need 4,000,000,000,000$"):
        wfdb_io.read_digital(header, tmp_path, buffer=wfdb_io.ReadBuffer())
    (tmp_path / "r.dat").unlink()
    with pytest.raises(RecordError, match="^missing signal file"):
        wfdb_io.check_files(header, tmp_path)


def test_lead_mapping_aliases_and_drops():
    idx, dropped, sign = wfdb_io.map_leads(["mlii", "AVR", "avl", "V5", "vx", "Lead I", "D3", "II", "v-6"])
    expect = {"II": 0, "aVR": 1, "aVL": 2, "V5": 3, "I": 5, "III": 6, "V6": 8}
    for lead, i in expect.items():
        assert idx[wfdb_io.LEADS.index(lead)] == i
    assert (idx >= 0).sum() == len(expect)
    assert dropped == ["vx", "II"]  # a second II is dropped, not swapped in
    assert (sign == 1).all()  # "v-6": a hyphen inside the name is not a minus sign


def test_lead_mapping_inverted_leads():
    idx, dropped, sign = wfdb_io.map_leads(["I", "-aVR", "lead -III", "\u2212V1", "aVR"])
    leads = wfdb_io.LEADS
    assert [idx[leads.index(n)] for n in ("I", "aVR", "III", "V1")] == [0, 1, 2, 3]
    assert [sign[leads.index(n)] for n in ("I", "aVR", "III", "V1")] == [1, -1, -1, -1]
    assert dropped == ["aVR"] and (sign[[leads.index(n) for n in leads[4:] if n != "V1"]] == 1).all()


def test_header_facts_shared_across_file_names():
    """Headers that differ only in file names and per-record fields share their parsed facts (one
    cache entry for an archive like PTB-XL), and each keeps its own file names."""
    def text(rec, init, files):
        return "".join([f"{rec} 3 500 10\n"] + [f"{f} 16 1000.0(0)/mV 16 0 {init + i} 123 0 {lead}\n"
                                                for i, (f, lead) in enumerate(zip(files, ("I", "II", "V1")))])
    a = wfdb_io.parse_header(text("a", 5, ["a.dat", "a.dat", "a2.dat"]))
    b = wfdb_io.parse_header(text("b", -7, ["b.dat", "b.dat", "b2.dat"]))
    c = wfdb_io.parse_header(text("c", 0, ["c.dat", "c2.dat", "c2.dat"]))
    assert a.layout is b.layout and a.layout is not c.layout
    assert wfdb_io.signal_groups(a) == {"a.dat": (0, 1), "a2.dat": (2,)}
    assert wfdb_io.signal_groups(b) == {"b.dat": (0, 1), "b2.dat": (2,)}
    assert wfdb_io.signal_groups(c) == {"c.dat": (0,), "c2.dat": (1, 2)}
    assert a.numpy_readable and a.facts.unit_scale and a.facts.descriptions == ("I", "II", "V1")
    assert not wfdb_io.parse_header(text("d", 0, ["~", "d.dat", "d.dat"])).numpy_readable
