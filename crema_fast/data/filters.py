"""Zero-phase IIR filtering in Numba, equal to ``scipy.signal.sosfiltfilt`` with the same SOS.

scipy designs the filter (``butter(..., output="sos")``, ``iirnotch`` -> ``tf2sos``); Numba applies it.
The IIR recursion is serial in time but independent across channels, so the kernels work on a time-major
buffer ``buf[t, lane]`` whose lanes are the channels of several records (12 leads x a few records) and the
innermost loop runs over lanes: that loop shape is the one LLVM turns into packed FMAs (see
shared/notes/numba-data-path.md; a loop over a constant 12 lanes stayed scalar).

Like scipy, the signal is extended at both ends by odd reflection over ``padlen`` samples
(``3 * (2 * n_sections + 1 - min(#(b2 == 0), #(a2 == 0)))``) and each pass starts from ``sosfilt_zi``
scaled by the first sample of that pass. The state and arithmetic dtype is the coefficients' (the buffer may
be float32 either way): float64 reproduces scipy's float64 result to float32 rounding; float32 is about 1.7x
faster and as accurate as scipy's own float32 filtering (tests/test_data/tolerances.py). Measured on one
core at 250 Hz, 64 lanes: ~41 µs (float32, sections fused in groups of up to three) / ~85 µs (float64
state) per 12-lead 10 s ECG for the default 6-section band-pass, both passes.
"""

from __future__ import annotations

from functools import lru_cache

import numba as nb
import numpy as np
from scipy import signal as sps

_FM = {"contract"}  # allow FMA contraction only: no reassociation, results stay reproducible
LANES = 64  # lanes per SIMD group: LLVM's vector body at AVX-512 is 4 x 16 float32 (48 lanes ran 2x slower)


def design_sos(fs: float, highpass: float | None, lowpass: float | None, order: int = 5,
               notch: float | None = None, notch_q: float = 30.0) -> np.ndarray:
    """The cascade applied by the data path, float64 (S, 6): Butterworth high-pass sections, then
    low-pass sections, then the notch (one section), all designed by scipy at sampling rate ``fs`` Hz."""
    return _design(float(fs), highpass, lowpass, int(order), notch, float(notch_q)).copy()


@lru_cache(maxsize=64)
def _design(fs, highpass, lowpass, order, notch, notch_q) -> np.ndarray:
    parts = []
    if highpass is not None:
        parts.append(sps.butter(order, highpass, btype="highpass", fs=fs, output="sos"))
    if lowpass is not None:
        parts.append(sps.butter(order, lowpass, btype="lowpass", fs=fs, output="sos"))
    if notch is not None:
        b, a = sps.iirnotch(notch, notch_q, fs=fs)
        parts.append(sps.tf2sos(b, a))
    if not parts:
        return np.zeros((0, 6))
    sos = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float64)
    sos.setflags(write=False)
    return sos


def padlen(sos: np.ndarray) -> int:
    """scipy.signal.sosfiltfilt's default pad length for this cascade."""
    if len(sos) == 0:
        return 0
    n_zero = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * (2 * len(sos) + 1 - n_zero)


@lru_cache(maxsize=64)
def _prepared(sos_bytes: bytes, n_sections: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    sos = np.frombuffer(sos_bytes, dtype=np.float64).reshape(n_sections, 6)
    zi = sps.sosfilt_zi(sos) if n_sections else np.zeros((0, 2))
    # Columns b0, b1, b2, a1, a2 (a0 is 1 for scipy's designs; normalize anyway).
    coef = np.stack([sos[:, 0], sos[:, 1], sos[:, 2], sos[:, 4], sos[:, 5]], axis=1) / sos[:, 3:4]
    return np.ascontiguousarray(coef, dtype=dtype), np.ascontiguousarray(zi, dtype=dtype)


def prepared(sos: np.ndarray, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """(coef (S, 5) = b0 b1 b2 a1 a2, zi (S, 2)) in the working dtype, cached per cascade."""
    sos = np.ascontiguousarray(sos, dtype=np.float64)
    return _prepared(sos.tobytes(), len(sos), dtype)


@nb.njit(cache=True, fastmath=_FM)
def _cascade_pass(buf, n_rows, coef, zi, x0, z0, z1, forward, lo=0):
    """One sosfilt pass over rows [0, n_rows) of buf (N, L) in place, forward or backward in time, every
    section starting from zi scaled by the pass's first input sample (scipy's ``zi * x[0]``).
    x0, z0, z1: scratch (L,). A backward pass stops after row ``lo`` (rows [0, lo) keep their input): the
    output at row t depends only on rows >= t, so rows [lo, n_rows) are exactly what the full pass gives.

    Sections are the outer loop and lanes the inner one: with the section loop inside the time loop LLVM
    left the lane loop scalar (measured 6x slower); this shape gives packed FMAs at 64+ lanes. Up to
    three consecutive second-order sections share one lane loop when the buffer has the state's dtype
    (the default float32 path): the intermediate outputs stay in registers instead of a store and a
    reload each, and the buffer is swept once per group instead of once per section (default band-pass,
    both passes, 250 Hz, one core: 52 -> 41 µs per ECG; the same arithmetic in the same order, so bit for
    bit the section-at-a-time result). With float64 state in a float32 buffer the sections run one by
    one, as each section's output is rounded to float32 in between."""
    L = buf.shape[1]
    S = coef.shape[0]
    first = 0 if forward else n_rows - 1
    step = 1 if forward else -1
    count = n_rows if forward else n_rows - lo
    fuse = buf.itemsize == coef.itemsize  # both real floats: the same dtype, no rounding in between
    z2 = np.empty(L, coef.dtype)
    z3 = np.empty(L, coef.dtype)
    z4 = np.empty(L, coef.dtype)
    z5 = np.empty(L, coef.dtype)
    for l in range(L):
        x0[l] = buf[first, l]
    s = 0
    while s < S:
        b0 = coef[s, 0]
        b1 = coef[s, 1]
        b2 = coef[s, 2]
        a1 = coef[s, 3]
        a2 = coef[s, 4]
        for l in range(L):
            z0[l] = zi[s, 0] * x0[l]
            z1[l] = zi[s, 1] * x0[l]
        t = first
        if b2 == 0 and a2 == 0:  # a first-order section (odd orders have one): its z1 stays 0
            for _ in range(count):
                row = buf[t]
                for l in range(L):
                    xv = row[l]
                    yv = b0 * xv + z0[l]
                    z0[l] = b1 * xv - a1 * yv
                    row[l] = yv
                t += step
            s += 1
            continue
        if (fuse and s + 2 < S and not (coef[s + 1, 2] == 0 and coef[s + 1, 4] == 0)
                and not (coef[s + 2, 2] == 0 and coef[s + 2, 4] == 0)):
            c0 = coef[s + 1, 0]
            c1 = coef[s + 1, 1]
            c2 = coef[s + 1, 2]
            d1 = coef[s + 1, 3]
            d2 = coef[s + 1, 4]
            e0 = coef[s + 2, 0]
            e1 = coef[s + 2, 1]
            e2 = coef[s + 2, 2]
            f1 = coef[s + 2, 3]
            f2 = coef[s + 2, 4]
            for l in range(L):
                z2[l] = zi[s + 1, 0] * x0[l]
                z3[l] = zi[s + 1, 1] * x0[l]
                z4[l] = zi[s + 2, 0] * x0[l]
                z5[l] = zi[s + 2, 1] * x0[l]
            for _ in range(count):
                row = buf[t]
                for l in range(L):  # the SIMD loop: independent channels, three sections
                    xv = row[l]
                    yv = b0 * xv + z0[l]
                    z0[l] = b1 * xv - a1 * yv + z1[l]
                    z1[l] = b2 * xv - a2 * yv
                    wv = c0 * yv + z2[l]
                    z2[l] = c1 * yv - d1 * wv + z3[l]
                    z3[l] = c2 * yv - d2 * wv
                    vv = e0 * wv + z4[l]
                    z4[l] = e1 * wv - f1 * vv + z5[l]
                    z5[l] = e2 * wv - f2 * vv
                    row[l] = vv
                t += step
            s += 3
            continue
        if fuse and s + 1 < S and not (coef[s + 1, 2] == 0 and coef[s + 1, 4] == 0):
            c0 = coef[s + 1, 0]
            c1 = coef[s + 1, 1]
            c2 = coef[s + 1, 2]
            d1 = coef[s + 1, 3]
            d2 = coef[s + 1, 4]
            for l in range(L):
                z2[l] = zi[s + 1, 0] * x0[l]
                z3[l] = zi[s + 1, 1] * x0[l]
            for _ in range(count):
                row = buf[t]
                for l in range(L):  # the SIMD loop: independent channels, two sections
                    xv = row[l]
                    yv = b0 * xv + z0[l]
                    z0[l] = b1 * xv - a1 * yv + z1[l]
                    z1[l] = b2 * xv - a2 * yv
                    wv = c0 * yv + z2[l]
                    z2[l] = c1 * yv - d1 * wv + z3[l]
                    z3[l] = c2 * yv - d2 * wv
                    row[l] = wv
                t += step
            s += 2
            continue
        for _ in range(count):
            row = buf[t]
            for l in range(L):  # the SIMD loop: independent channels
                xv = row[l]
                yv = b0 * xv + z0[l]
                z0[l] = b1 * xv - a1 * yv + z1[l]
                z1[l] = b2 * xv - a2 * yv
                row[l] = yv
            t += step
        s += 1


@nb.njit(cache=True, fastmath=_FM)
def filtfilt_inplace(buf, n, pad, coef, zi):
    """Zero-phase filtering of a time-major buffer (n + 2 * pad, L) whose rows [pad, pad + n) hold the
    signal; on return those rows hold sosfiltfilt's output (the pad rows are scratch). n > pad >= 0.
    Best at L a multiple of 64 (LLVM's vector body is 4 x 16 float32 lanes)."""
    filtfilt_from(buf, n, pad, coef, zi, 0)


@nb.njit(cache=True, fastmath=_FM)
def filtfilt_from(buf, n, pad, coef, zi, lo):
    """``filtfilt_inplace`` whose output is needed only from buffer row ``lo`` on: the backward pass stops
    there (rows [lo, pad + n) are bit for bit the full result; earlier rows are left unfinished). A crop
    that starts late in the record skips the backward pass over the samples before it."""
    if coef.shape[0] == 0:
        return
    L = buf.shape[1]
    last = pad + n - 1
    for i in range(1, pad + 1):  # scipy's odd extension
        for l in range(L):
            buf[pad - i, l] = 2 * buf[pad, l] - buf[pad + i, l]
        for l in range(L):
            buf[last + i, l] = 2 * buf[last, l] - buf[last - i, l]
    x0 = np.empty(L, coef.dtype)
    z0 = np.empty(L, coef.dtype)
    z1 = np.empty(L, coef.dtype)
    _cascade_pass(buf, n + 2 * pad, coef, zi, x0, z0, z1, True, 0)
    _cascade_pass(buf, n + 2 * pad, coef, zi, x0, z0, z1, False, max(0, min(lo, n + 2 * pad - 1)))


@nb.njit(cache=True, parallel=True, fastmath=_FM)
def _sosfiltfilt_rows(x, coef, zi, pad, lanes, out):
    """x (R, n) any real dtype -> out (R, n) float32, rows filtered independently, ``lanes`` rows per
    SIMD group, groups in parallel."""
    R, n = x.shape
    n_groups = (R + lanes - 1) // lanes
    for g in nb.prange(n_groups):
        r0 = g * lanes
        L = min(lanes, R - r0)
        buf = np.empty((n + 2 * pad, L), coef.dtype)
        for t in range(n):
            for j in range(L):
                buf[pad + t, j] = x[r0 + j, t]
        filtfilt_inplace(buf, n, pad, coef, zi)
        for t in range(n):
            for j in range(L):
                out[r0 + j, t] = buf[pad + t, j]


def sosfiltfilt(x: np.ndarray, sos: np.ndarray, *, precision: str = "float32", pad: int | None = None
                ) -> np.ndarray:
    """Zero-phase filtering along the last axis, as ``scipy.signal.sosfiltfilt(sos, x, axis=-1)``.

    x: (..., n) int16/float32/float64; sos: (S, 6); precision: the state dtype ("float32" | "float64"; here
    the working buffer has that dtype too); pad: the odd-extension length (default: scipy's).
    Returns float32 (..., n).
    """
    x = np.asarray(x)
    if x.ndim < 1 or x.dtype.kind not in "iuf":
        raise TypeError(f"x: expected a real array (..., n), got dtype {x.dtype} with shape {x.shape}")
    sos = np.asarray(sos, dtype=np.float64)
    if sos.ndim != 2 or sos.shape[1] != 6:
        raise ValueError(f"sos: expected shape (S, 6), got {sos.shape}")
    pad = padlen(sos) if pad is None else int(pad)
    n = x.shape[-1]
    if not 0 <= pad < n:
        raise ValueError(f"x: expected more than padlen={pad} samples along the last axis, got {n}")
    coef, zi = prepared(sos, precision)
    rows = np.ascontiguousarray(x.reshape(-1, n))
    out = np.empty(rows.shape, np.float32)
    if rows.shape[0]:
        _sosfiltfilt_rows(rows, coef, zi, pad, LANES, out)
    return out.reshape(x.shape)
