"""One WFDB record -> store rows: inspection (cheap validation that fixes the row count before anything
is written) and conversion to int16 microvolts at the store rate.

Inspection reads the header and the signal bytes once (~50 µs for a PTB-XL record) so that every bad
record is known before rows are assigned: the row layout of a conversion is then a pure function of
the inputs, which is what makes shard tasks independent, deterministic and resumable.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from zarr_store import sources, wfdb_io
from zarr_store.errors import RecordError
from zarr_store.wfdb_io import LEADS

N_LEADS = len(LEADS)
BAD_REASONS = ("missing header", "malformed header", "missing signal file", "truncated", "unreadable",
               "all-NaN", "flat", "too short", "no standard leads", "implausible amplitude", "not a MATLAB file")
# A record is physically absurd, not merely clipped, when more than this share of its samples lies
# outside the store's int16 µV range (±32.8 mV; an ECG's QRS is a few mV): random bytes at a gain of
# 200/mV give ~85%, a real ECG with a saturated lead a few percent (those are kept, clipped and counted).
MAX_CLIPPED = 0.5


class PlannedRecord(NamedTuple):
    """A record that passed inspection. ``n`` source frames at ``fs`` Hz become ``n_out`` samples at the
    store rate, cut into ``n_windows`` rows. ``lead_idx[j]`` is the source signal of standard lead j
    (-1 = missing); the leads in ``inverted`` are stored negated (signals named "-aVR"). ``wfdb`` marks
    records read through the wfdb fallback. A NamedTuple: immutable like a frozen dataclass, and made
    in ~0.5 µs instead of ~5 (twice per record)."""

    source: int
    record_id: str
    path: str
    fs: float
    n: int
    n_out: int
    n_windows: int
    lead_idx: tuple[int, ...]
    dropped: tuple[str, ...]
    inverted: tuple[int, ...]
    wfdb: bool
    age: float
    sex: int
    labels: str
    strat_fold: int
    patient_id: str

    def with_meta(self, age: float, sex: int, labels: str, strat_fold: int, patient_id: str) -> PlannedRecord:
        """This record with other metadata (the last five fields)."""
        return PlannedRecord(*self[:11], age, sex, labels, strat_fold, patient_id)


@dataclass(frozen=True)
class BadRecord:
    source: int
    record_id: str
    reason: str
    detail: str


@functools.lru_cache(maxsize=256)
def resample_ratio(fs: float, rate: int) -> tuple[int, int]:
    """(up, down) with up / down = rate / fs exactly (fs rounded to 1e-6 Hz)."""
    frac = Fraction(rate) / Fraction(fs).limit_denominator(1_000_000)
    return frac.numerator, frac.denominator


def n_resampled(n: int, fs: float, rate: int) -> int:
    """Length of scipy.signal.resample_poly's output: ceil(n * up / down)."""
    up, down = resample_ratio(fs, rate)
    return -(-n * up // down)


def windows_of(n_out: int, window: int, min_samples: int) -> int:
    """Rows for a record of ``n_out`` samples: the full windows, plus the tail when it is at least
    ``min_samples`` long (a shorter tail is dropped; a record with no row is "too short")."""
    full, tail = divmod(n_out, window)
    return full + (1 if tail >= max(min_samples, 1) else 0)


def _reason(exc: RecordError) -> tuple[str, str]:
    text = str(exc)
    reason, _, detail = text.partition(": ")
    if reason not in BAD_REASONS:
        return "unreadable", text
    return reason, detail


def _explain(exc: Exception) -> str:
    """A sentence for an exception no check anticipated (bare "KeyError: '999'" told the reader nothing)."""
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, MemoryError):
        return f"the header announces more samples than fit in memory ({what})"
    if isinstance(exc, (KeyError, IndexError)):
        return f"the header names a format, signal or value that WFDB does not define ({what})"
    if isinstance(exc, (ValueError, OverflowError, ZeroDivisionError)):
        return f"the header or signal file holds values that cannot be decoded as WFDB ({what})"
    return f"reading the record failed ({what})"


# record path -> (header or None, samples, ReadBuffer or None) read by inspection, for the in-process
# converter, which writes a record's rows soon after inspecting it: the signal file is then read once,
# not twice. The buffers of released records are used again (_POOL): see wfdb_io.ReadBuffer.
_CACHE: dict[str, tuple] = {}
_POOL: list[wfdb_io.ReadBuffer] = []


def release_cache(path: str | None = None) -> None:
    """Forget what inspection kept for ``path`` (everything, and the buffers, when None)."""
    if path is None:
        _CACHE.clear()
        _POOL.clear()
        return
    entry = _CACHE.pop(path, None)
    if entry is not None and entry[2] is not None:
        _give_back(entry[2])


def _give_back(buffer: wfdb_io.ReadBuffer) -> None:
    # Kept for the next records: as many as run_streaming holds at once, of ordinary record sizes (a
    # Holter record's buffer goes back to the allocator).
    if len(_POOL) < 64 and buffer.nbytes <= 4 << 20:
        _POOL.append(buffer)


# (conversion token, record path) -> the Header a worker process parsed to predict the record
# (zarr_store.plan.predict_record), for its own shard task's inspection of it: the header is then
# read once. Each is taken on first use; the token (new for each conversion) keeps a long-lived
# Dask worker from taking a header an earlier conversion left, and MAX_HEADERS bounds what the
# records of resumed shards, or of shard tasks run elsewhere, leave behind.
_HEADERS: dict[tuple[str, str], wfdb_io.Header] = {}
MAX_HEADERS = 4096


def keep_header(token: str, path: str, header: wfdb_io.Header) -> None:
    if len(_HEADERS) >= MAX_HEADERS:
        try:
            del _HEADERS[next(iter(_HEADERS))]  # the oldest
        except (KeyError, RuntimeError, StopIteration):  # another thread of a Dask worker was first
            pass
    _HEADERS[(token, path)] = header


def inspect_record(source: int, root: str, record_id: str, rate: int, window: int,
                   min_seconds: float, keep: bool = False, token: str | None = None) -> PlannedRecord | BadRecord:
    """Validate one record and compute its rows; never raises for a bad record. ``keep``: hold the
    samples read for record_signal (see _CACHE; release_cache frees them). ``token``: use the header
    kept under it (keep_header), if any, instead of reading it again."""
    path = os.path.join(root, record_id)  # strings, not pathlib: this runs once per record
    buffer = (_POOL.pop() if _POOL else wfdb_io.ReadBuffer()) if keep else None
    header = _HEADERS.pop((token, path), None) if token is not None and _HEADERS else None
    kept = None
    try:
        kept, result = _inspect(source, path, record_id, rate, window, min_seconds, buffer, header)
        return result
    except RecordError as exc:
        reason, detail = _reason(exc)
        return BadRecord(source, record_id, reason, sources.escape_name(detail))
    except Exception as exc:  # never die on one record; the report says what failed, in a sentence
        return BadRecord(source, record_id, "unreadable", sources.escape_name(_explain(exc)))
    finally:
        if kept is not None:
            _CACHE[path] = (*kept, buffer)
        elif buffer is not None:
            _give_back(buffer)


def _inspect(source, path, record_id, rate, window, min_seconds, buffer,
             header=None) -> tuple[tuple | None, PlannedRecord | BadRecord]:
    """((header or None, samples) to keep, or None; the PlannedRecord or BadRecord). Signal files
    are read into ``buffer`` when it is given; what is kept is returned only then. ``header``: the
    record's, already read (else read here)."""
    directory = os.path.dirname(path)
    if header is None:
        header = wfdb_io.read_header(path + ".hea")
    meta = sources.comment_meta(header.comments) if header.comments else _NO_META
    if header.numpy_readable:
        # read_digital checks what check_files would (missing, short, unreadable files) when the
        # header gives the length; check_files only when the length comes from the file size.
        n = header.sig_len or wfdb_io.check_files(header, directory)
        lead_idx, dropped, inverted, sel = lead_plan(header.facts.descriptions)
        if len(sel) == 0:
            names = [s.description for s in header.signals]
            return None, BadRecord(source, record_id, "no standard leads", f"signals {names}")
        d = wfdb_io.read_digital(header, directory, n, buffer)
        if n and _is_flat(d, sel):
            bad = all((d[:, i] == wfdb_io.INVALID[header.signals[i].fmt]).all() for i in sel)
            return None, BadRecord(source, record_id, "all-NaN" if bad else "flat", "every standard lead is constant")
        # µV ADC values in int16 files are the stored values, nothing to check; in 24/32-bit files
        # they can lie beyond the store's int16 range
        if n and not (header.facts.unit_scale and d.dtype == np.int16):
            why = _implausible_digital(header, d, sel)
            if why:
                return None, BadRecord(source, record_id, "implausible amplitude", why)
        fs, use_wfdb = header.fs, False
        cached = (header, d)
    else:
        x, names, _ = wfdb_io.read_physical_wfdb(Path(path))
        n = len(x)
        lead_idx, dropped, inverted, sel = lead_plan(tuple(names))
        if len(sel) == 0:
            return None, BadRecord(source, record_id, "no standard leads", f"signals {names}")
        xs = x[:, sel]
        if n and np.isnan(xs).all():
            return None, BadRecord(source, record_id, "all-NaN", "every standard lead is NaN")
        if n and (np.nan_to_num(xs) == np.nan_to_num(xs[0])).all():
            return None, BadRecord(source, record_id, "flat", "every standard lead is constant")
        why = implausible_reason(xs[~np.isnan(xs)], "")
        if n and why:
            return None, BadRecord(source, record_id, "implausible amplitude", why)
        fs, use_wfdb = header.fs, True
        cached = (None, x)
    n_out = n if fs == rate else n_resampled(n, fs, rate)
    min_samples = math.ceil(min_seconds * rate)
    n_windows = windows_of(n_out, window, min_samples) if n_out >= min_samples else 0
    if n_windows == 0:
        return None, BadRecord(source, record_id, "too short", f"{n / fs:.3f} s < {min_seconds} s")
    planned = PlannedRecord(source, record_id, path, float(fs), int(n), int(n_out), int(n_windows), lead_idx,
                            dropped, inverted, use_wfdb, meta.age, meta.sex, meta.labels, meta.strat_fold,
                            meta.patient_id)
    return (cached if buffer is not None else None), planned


_NO_META = sources.RecordMeta()  # read only


def _implausible_digital(header, d: np.ndarray, sel: np.ndarray) -> str:
    """Why the standard leads of ADC values ``d`` (n, n_sig) are physically absurd once in µV, or ""."""
    specs = [header.signals[i] for i in sel]
    x = d[:, sel].astype(np.float64)
    valid = x != np.array([wfdb_io.INVALID[s.fmt] for s in specs], dtype=np.float64)
    x -= np.array([s.baseline for s in specs], dtype=np.float64)
    x *= np.array([s.uv for s in specs], dtype=np.float64)
    gains = sorted({f"{s.gain:g}/{s.units}" for s in specs})
    return implausible_reason(x[valid], f" (gain {', '.join(gains[:3])})")


def implausible_reason(uv: np.ndarray, gain: str) -> str:
    """Why samples ``uv`` (µV, no-data values left out) are no ECG, or "": every one rounds to 0 µV (a
    gain of 1e30 per mV: it would be stored as an all-zero row), or most lie beyond the int16 range."""
    if not uv.size or not np.isfinite(uv).all():
        return "" if not uv.size else "samples are not finite numbers once scaled to µV" + gain
    peak = float(np.abs(uv).max())
    if peak < 0.5:
        return f"every sample rounds to 0 µV (largest {peak:.3g} µV){gain}: stored, it would be an all-zero row"
    over = float(((uv > 32767.5) | (uv < -32768.5)).mean())
    if over > MAX_CLIPPED:
        return (f"{over:.0%} of samples lie beyond ±32.8 mV, the store's int16 µV range (largest {peak / 1000:.3g} mV)"
                f"{gain}: not an ECG at this gain")
    return ""


@functools.lru_cache(maxsize=1024)
def lead_plan(names: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[str, ...], tuple[int, ...], np.ndarray]:
    """(source signal per standard lead, -1 = missing; dropped names; standard leads whose signal is
    inverted ("-aVR"); the present leads' source signals, read-only). Cached: an archive repeats a
    handful of signal lists, and this runs once per record."""
    idx, dropped, sign = wfdb_io.map_leads(names)
    sel = idx[idx >= 0]
    sel.flags.writeable = False
    inverted = tuple(int(j) for j in np.flatnonzero(sign < 0))
    return tuple(int(i) for i in idx), tuple(dropped), inverted, sel


def _is_flat(d: np.ndarray, sel: np.ndarray) -> bool:
    if len(sel) != d.shape[1]:
        return bool((d[:, sel] == d[0, sel]).all())
    head = d[:64].tobytes()  # almost every real record is decided by its first frames, as bytes
    if head != head[: d.shape[1] * d.itemsize] * min(len(d), 64):
        return False
    return bool((d == d[0]).all())


@functools.lru_cache(maxsize=1024)
def present_leads(lead_idx: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """(standard leads present, their source signals, True when that is all 12 in order), read-only."""
    idx = np.asarray(lead_idx)
    present = np.flatnonzero(idx >= 0)
    sel = idx[present]
    present.flags.writeable = sel.flags.writeable = False
    return present, sel, len(present) == N_LEADS and bool((sel == np.arange(N_LEADS)).all())


@dataclass
class SignalStats:
    clipped: int = 0
    invalid: int = 0


# Records up to this many frames are resampled by zarr_store.polyphase, longer ones by scipy's
# resample_poly (the same values to ~1e-12: after rounding to µV, 0 of 18 million samples differed on 300
# PTB-XL records at 400 -> 500 Hz). Measured per record: 10 s, 12 leads, 400 -> 500 Hz: 0.64 ms against
# scipy's 1.49; 1 to 12 lanes of 2,500-10,000 frames at 360 -> 500, 400 -> 500, 1000 -> 500 and 250 -> 500
# Hz: 1.3x-2.7x faster; but 650,000 frames (a 30-minute MIT-BIH record) of 1 and 2 leads: 2.7x and
# 1.2x slower (its padded copy and output no longer fit the caches).
POLY_FRAMES = 30_000


def record_signal(rec: PlannedRecord, rate: int, out: np.ndarray | None = None) -> tuple[np.ndarray, SignalStats]:
    """The record at the store rate in the standard lead order: int16 µV, shape (12, n_out); missing
    leads are zeros; inverted signals ("-aVR") are negated back; no-data samples (the format's invalid
    value, NaN) become 0 and are counted, values outside int16 are clipped and counted. ``out``: an
    array the result may be written into (the result is then ``out``), for a caller done with each
    result before the next: fresh memory costs page faults."""
    present, sel, identity = present_leads(rec.lead_idx)
    stats = SignalStats()
    cached = _CACHE.get(rec.path)
    if rec.wfdb:
        x = cached[1] if cached is not None else wfdb_io.read_physical_wfdb(Path(rec.path))[0]
        x = x[: rec.n, sel]
        bad = np.isnan(x)
    else:
        if cached is not None:
            header, d = cached[0], cached[1]
        else:
            header = wfdb_io.read_header(rec.path + ".hea")
            d = wfdb_io.read_digital(header, os.path.dirname(rec.path), rec.n)
        if d.dtype == np.int16 and rec.n_out == rec.n and header.facts.unit_scale:
            return _fast_signal(rec, d, header.signals[sel[0]].fmt, present, sel, identity, stats, out)
        specs = [header.signals[i] for i in sel]
        if d.dtype == np.int16 and rec.n_out == rec.n and all(s.uv == 1.0 and s.baseline == 0 for s in specs):
            return _fast_signal(rec, d, specs[0].fmt, present, sel, identity, stats, out)
        x = d[:, sel].astype(np.float64)
        bad = x == np.array([wfdb_io.INVALID[s.fmt] for s in specs], dtype=np.float64)
        x -= np.array([s.baseline for s in specs], dtype=np.float64)
        x *= np.array([s.uv for s in specs], dtype=np.float64)
    stats.invalid = int(bad.sum())
    if stats.invalid:
        x[bad] = 0.0
    if rec.inverted:  # before rounding and clipping, so that clipping counts the stored values
        x[:, _columns(present, rec.inverted)] *= -1.0
    up, down = resample_ratio(rec.fs, rate)
    if (up, down) != (1, 1) and len(x) <= POLY_FRAMES:
        from zarr_store.polyphase import resample

        x = resample(np.ascontiguousarray(x), up, down)  # = resample_poly, ~2x faster (POLY_FRAMES)
    elif (up, down) != (1, 1):
        from scipy.signal import resample_poly

        x = resample_poly(x, up, down, axis=0)
    y = np.rint(x)
    over = (y > 32767) | (y < -32768)
    stats.clipped = int(over.sum())
    if stats.clipped:
        np.clip(y, -32768, 32767, out=y)
    out = np.zeros((N_LEADS, len(y)), dtype=np.int16)
    out[present] = y.T
    return out, stats


def _fast_signal(rec, d, fmt, present, sel, identity, stats, out) -> tuple[np.ndarray, SignalStats]:
    """PTB-XL, CinC: ADC units are already µV at the store rate (int16 samples of format 16, 61 or 80);
    no float round trip."""
    if out is None or out.shape != (N_LEADS, rec.n) or out.dtype != np.int16:
        out = np.empty((N_LEADS, rec.n), dtype=np.int16)
    if identity and d.shape[1] == N_LEADS:
        out[:] = d.T  # every lead written: no zero fill
    else:
        out.fill(0)
        out[present] = d[:, sel].T
    # The format's own no-data value (-32768 for 16 and 61, -128 for 80). One value: int16 samples come
    # from one signal file, whose signals share a format (read_digital). It is the lowest value the
    # format holds, so a minimum above it rules it out cheaply (almost every record).
    invalid = wfdb_io.INVALID[fmt]
    if out.min() <= invalid:
        bad = out[present] == invalid
        stats.invalid = int(bad.sum())
        if stats.invalid:
            out[present] = np.where(bad, 0, out[present])
    for j in rec.inverted:
        # no -32768 left (it is format 16's no-data value, zeroed above): the negation cannot overflow
        np.negative(out[j], out=out[j])
    return out, stats


def _columns(present: np.ndarray, leads: tuple[int, ...]) -> list[int]:
    """Columns of the present-lead matrix that hold standard leads ``leads``."""
    pos = {int(j): k for k, j in enumerate(present)}
    return [pos[j] for j in leads]
