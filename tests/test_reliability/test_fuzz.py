"""Bad WFDB input fuzzed with hypothesis (derandomized, bounded): beside one good record, one damaged
record per example (random header bytes, truncation, wrong sample counts, absurd gains and rates,
formats, signal counts, Unicode and path-like names). The converter never stops beyond the record:
the damaged one is either converted or in the report with a reason, and the good one is stored equal
to wfdb.rdsamp as int16 µV."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import wfdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_reliability.tally import TALLY
from tests.test_zarr_store.archives import ecg_like, load, write_record
from zarr_store.convert import REPORT_KEY, convert

_GOOD = ecg_like(2500, 500, 12, 3)
_NAMES = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\."), min_size=1,
                 max_size=10).filter(lambda s: s.strip() == s and s.lower() != "good")


def _header_edit(text: str, field: int, value: str) -> str:
    head, rest = text.split("\n", 1)
    parts = head.split()
    parts[field] = value
    return " ".join(parts) + "\n" + rest


def _signal_edit(text: str, col: int, value: str) -> str:
    lines = text.splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        f = line.split()
        if len(f) > col:
            f[col] = value
        out.append(" ".join(f))
    return "\n".join(out) + "\n"


MUTATIONS = st.one_of(
    st.tuples(st.just("header bytes"), st.binary(min_size=0, max_size=200)),
    st.tuples(st.just("truncate dat"), st.integers(0, 2500 * 24 - 1)),
    st.tuples(st.just("dat bytes"), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("sample count"), st.sampled_from(["0", "1", "2501", "-4", "99999999", "x"])),
    st.tuples(st.just("gain"), st.sampled_from(["1e30", "1e-30", "0", "-1000", "nan", "inf", "abc", "1e308"])),
    st.tuples(st.just("rate"), st.sampled_from(["0", "-500", "1e-30", "nan", "1e12", "500/0", "abc"])),
    st.tuples(st.just("format"), st.sampled_from(["999", "212", "8", "0", "-16", "16x", "80", "24"])),
    st.tuples(st.just("signal count"), st.sampled_from(["0", "13", "99", "-1", "1"])),
    st.tuples(st.just("name"), _NAMES),
    st.tuples(st.just("path name"), st.tuples(_NAMES, _NAMES)),
)


def _write(root: Path, kind: str, arg) -> str:
    """The damaged record's name (relative to root)."""
    write_record(root, "good", _GOOD, 500)
    write_record(root, "bad", _GOOD, 500)
    hea, dat = root / "bad.hea", root / "bad.dat"
    text = hea.read_text()
    if kind == "header bytes":
        hea.write_bytes(arg)
    elif kind == "truncate dat":
        dat.write_bytes(dat.read_bytes()[:arg])
    elif kind == "dat bytes":
        dat.write_bytes(dat.read_bytes()[:-len(arg)] + arg)
    elif kind == "sample count":
        hea.write_text(_header_edit(text, 3, arg))
    elif kind == "gain":
        hea.write_text(text.replace("1000.0(0)/mV", f"{arg}(0)/mV"))
    elif kind == "rate":
        hea.write_text(_header_edit(text, 2, arg))
    elif kind == "format":
        hea.write_text(_signal_edit(text, 1, arg))
    elif kind == "signal count":
        hea.write_text(_header_edit(text, 1, arg))
    else:  # a Unicode name, or one inside a folder
        name = arg if kind == "name" else f"{arg[0]}/{arg[1]}"
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / (target.name + ".hea")).write_text(
            text.replace("bad", target.name).replace(f"{target.name}.dat", "bad.dat") if False else
            text.replace("bad.dat", f"{target.name}.dat").replace("bad ", f"{target.name} ", 1), encoding="utf-8")
        shutil.move(dat, target.parent / f"{target.name}.dat")
        hea.unlink()
        return name
    return "bad"


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=MUTATIONS)
def test_damaged_record_beside_a_good_one(tmp_path_factory, mutation):
    kind, arg = mutation
    root = tmp_path_factory.mktemp("fuzz")
    src = root / "src"
    bad_name = _write(src, kind, arg)
    TALLY["inputs tried"] += 1
    TALLY["faults injected"] += 1
    try:
        convert([src], root / "s.zarr", progress=False)
    except Exception:
        TALLY["tracebacks reaching the user"] += 1
        raise
    a = load(root / "s.zarr")
    report = json.loads((root / "s.zarr" / REPORT_KEY).read_text())["records"]
    stored = set(a["record_id"].tolist())
    reported = {r["record_id"]: r["reason"] for r in report}
    assert all(reason and r["detail"] is not None for r, reason in zip(report, reported.values()))
    bad_id = bad_name if kind != "path name" else bad_name.split("/", 1)[1]  # its top folder names the source
    lost = [n for n in ("good", bad_id) if n not in stored and n not in reported]
    TALLY["records lost"] += len(lost)
    assert not lost, (kind, arg, stored, reported)
    row = a["record_id"].tolist().index("good")
    p, _ = wfdb.rdsamp(str(src / "good"))
    want = np.zeros((12, 5000), np.int16)
    want[:, :2500] = np.rint(p.T * 1000)
    np.testing.assert_array_equal(a["signals"][row], want)
