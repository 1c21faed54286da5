"""Small WFDB archives written with ``wfdb.wrsamp`` for the store tests (no real data needed).

``write_archive(root, n=4, ...)`` writes ``n`` good records (``good000`` ...) and one record of each
requested bad kind (``bad_<kind>``), plus a RECORDS file, and returns an ``Archive`` that says which is
which. ``load`` reads a converted store's arrays back and ``assert_same_arrays`` compares two of them.
Other test modules (the reader's, the loader's) import it: keep the API plain.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr

LEADS12 = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
BAD_KINDS = ("unreadable", "truncated", "malformed header", "missing signal file", "all-NaN", "flat",
             "too short", "missing header", "no standard leads")
# Every array a conversion writes, compared across stores that must be equal.
ARRAYS = ("signals", "lead_mask", "valid_length", "window_index", "record_id", "source", "orig_rate", "age",
          "sex", "labels", "strat_fold", "patient_id")

PTBXL_N = 24

DUPLICATE = "duplicate (same ecg_id at another rate)"



@dataclass
class Archive:
    root: Path
    good: list[str] = field(default_factory=list)  # record names, sorted
    bad: dict[str, str] = field(default_factory=dict)  # record name -> expected reason
    signals: dict[str, np.ndarray] = field(default_factory=dict)  # good name -> physical (n, n_sig) mV


def ecg_like(n: int, fs: float, n_sig: int, seed: int) -> np.ndarray:
    """A deterministic ECG-like test signal in mV, shape (n, n_sig): beats, baseline wander, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    beats = np.exp(-(((t % 0.8) - 0.3) ** 2) / (2 * 0.01**2))
    out = np.empty((n, n_sig))
    for j in range(n_sig):
        out[:, j] = (rng.uniform(0.3, 1.5) * beats + 0.2 * np.sin(2 * np.pi * 0.3 * t + j)
                     + 0.02 * rng.standard_normal(n))
    return np.round(out, 3)  # exactly representable at gain 1000 (1 µV)


def write_record(root: Path, name: str, signal: np.ndarray, fs: float, names=LEADS12, fmt: str = "16",
                 gain: float = 1000.0, comments: list[str] | None = None) -> None:
    """One record ``root/name`` from a physical signal (n, n_sig) in mV."""
    import wfdb

    root.mkdir(parents=True, exist_ok=True)
    n_sig = signal.shape[1]
    wfdb.wrsamp(name, fs=fs, units=["mV"] * n_sig, sig_name=list(names)[:n_sig], p_signal=signal,
                fmt=[fmt] * n_sig, adc_gain=[gain] * n_sig, baseline=[0] * n_sig,
                comments=comments or [], write_dir=str(root))


def write_archive(root, n: int = 4, fs: float = 500, seconds: float = 10.0, bad=BAD_KINDS, seed: int = 0,
                  names=LEADS12, fmt: str = "16", records_file: bool = True) -> Archive:
    """``n`` good records (ages 40 + i, alternating sex, Dx labels) and one record per kind in ``bad``."""
    root = Path(root)
    arch = Archive(root)
    length = int(round(seconds * fs))
    for i in range(n):
        name = f"good{i:03d}"
        sig = ecg_like(length, fs, len(names), seed + i)
        write_record(root, name, sig, fs, names, fmt,
                     comments=[f"Age: {40 + i}", f"Sex: {'Male' if i % 2 == 0 else 'Female'}", f"Dx: {100 + i},7"])
        arch.good.append(name)
        arch.signals[name] = sig
    for kind in bad:
        name = "bad_" + kind.replace(" ", "_").replace("-", "_")
        _write_bad(root, name, kind, length, fs, seed)
        arch.bad[name] = kind
    if records_file:
        (root / "RECORDS").write_text("".join(f"{r}\n" for r in sorted([*arch.good, *arch.bad])))
    return arch


def _write_bad(root: Path, name: str, kind: str, length: int, fs: float, seed: int) -> None:
    sig = ecg_like(length, fs, 12, seed + 1000)
    if kind == "too short":
        write_record(root, name, sig[: int(0.4 * fs)], fs)
        return
    if kind == "flat":
        write_record(root, name, np.full_like(sig, 0.25), fs)
        return
    if kind == "no standard leads":
        write_record(root, name, sig[:, :3], fs, names=("vx", "vy", "vz"))
        return
    if kind == "missing header":
        return  # listed in RECORDS, nothing on disk
    if kind == "all-NaN":
        import wfdb

        root.mkdir(parents=True, exist_ok=True)
        d = np.full((length, 12), -32768, dtype=np.int16)  # WFDB's no-data value in format 16
        wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(LEADS12), d_signal=d, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(root))
        return
    write_record(root, name, sig, fs)
    dat, hea = root / f"{name}.dat", root / f"{name}.hea"
    if kind == "truncated":
        data = dat.read_bytes()
        dat.write_bytes(data[: len(data) // 2])
    elif kind == "missing signal file":
        dat.unlink()
    elif kind == "malformed header":
        lines = hea.read_text().splitlines()
        lines[0] = f"{name} twelve {fs:g} {length}"
        hea.write_text("\n".join(lines) + "\n")
    elif kind == "unreadable":
        dat.unlink()
        dat.mkdir()  # a folder where the signal file should be: exists, cannot be read
    else:
        raise ValueError(f"kind: expected one of {BAD_KINDS}, got {kind!r}")


def copy_subset(src_root: Path, dst_root: Path, names: list[str], extra_files=(), records_file: bool = False
                ) -> Path:
    """Symlink ``names`` (record paths relative to ``src_root``) and ``extra_files`` into ``dst_root``,
    keeping relative paths, so that a test converts a few real records without copying data (the one
    helper for this: the store, info and data tests all build their PTB-XL subsets with it).
    records_file: also write a RECORDS file listing ``names`` (the converter then reads exactly those)."""
    dst_root = Path(dst_root)
    for name in names:
        for f in Path(src_root).glob(f"{name}.*"):
            target = dst_root / f.relative_to(src_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    for extra in extra_files:
        target = dst_root / extra
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(Path(src_root) / extra)
    if records_file:
        dst_root.mkdir(parents=True, exist_ok=True)
        (dst_root / "RECORDS").write_text("".join(f"{n}\n" for n in names))
    return dst_root


def ptbxl_names(shared_data: Path, n: int) -> list[str]:
    """The first ``n`` PTB-XL 500 Hz records of ``shared_data``, as paths relative to its ptbxl folder."""
    heads = sorted((Path(shared_data) / "ptbxl" / "records500").glob("*/*_hr.hea"))[:n]
    return [h.relative_to(Path(shared_data) / "ptbxl").with_suffix("").as_posix() for h in heads]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def load(store) -> dict[str, np.ndarray]:
    """Every array in ``ARRAYS`` of a converted store (path or fsspec URL), read whole."""
    group = zarr.open_group(str(store), mode="r")
    return {name: group[name][:] for name in ARRAYS}


def assert_same_arrays(a, b):
    for name in ARRAYS:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
