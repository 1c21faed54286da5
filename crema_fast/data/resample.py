"""Polyphase resampling in Numba, equal to ``scipy.signal.resample_poly(x, up, down)`` with its defaults
(Kaiser window, beta 5.0, 20 * max(up, down) + 1 taps, zero padding at both ends).

scipy designs the FIR filter and the output alignment; the kernel applies it to a time-major buffer
``buf[t, lane]`` with the lanes (channels of several records) innermost, so that each tap is one broadcast
FMA over the lanes. Taps that are zero to rounding (every other tap of a half-band filter, 500 -> 250 Hz)
are skipped: a factor two on the commonest case.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numba as nb
import numpy as np
from scipy import signal as sps

from crema_fast.data.filters import LANES

_FM = {"contract"}


def ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    """(up, down) in lowest terms for ``rate_in`` -> ``rate_out`` (both positive ints, Hz)."""
    for name, v in (("rate_in", rate_in), ("rate_out", rate_out)):
        if int(v) != v or v <= 0:
            raise ValueError(f"{name}: expected a positive integer rate in Hz, got {v!r}")
    g = math.gcd(int(rate_in), int(rate_out))
    return int(rate_out) // g, int(rate_in) // g


def out_length(n_in: int | np.ndarray, up: int, down: int):
    """resample_poly's output length: ceil(n_in * up / down)."""
    return -(-np.asarray(n_in) * up // down) if isinstance(n_in, np.ndarray) else -(-n_in * up // down)


@dataclass(frozen=True)
class Plan:
    """The polyphase form of resample_poly for inputs of n_in samples.

    Output m = sum_i vals[phase[m], i] * x[start[m] + offs[phase[m], i]] for i < count[phase[m]], with x
    zero outside [0, n_in); ``lpad`` / ``rpad`` zero rows before / after the input make every index valid.
    """

    up: int
    down: int
    n_in: int
    n_out: int
    start: np.ndarray  # int64 (n_out,)
    phase: np.ndarray  # int64 (n_out,)
    offs: np.ndarray  # int64 (up, Q)
    vals: np.ndarray  # float64 (up, Q)
    count: np.ndarray  # int64 (up,)
    lpad: int
    rpad: int


@lru_cache(maxsize=32)
def plan(up: int, down: int, n_in: int) -> Plan:
    """Design (with scipy's firwin and alignment) the polyphase plan of resample_poly(x, up, down)."""
    g = math.gcd(up, down)
    up, down = up // g, down // g
    n_out = out_length(n_in, up, down)
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = sps.firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    # scipy's alignment: zeros before the filter so the output samples sit at its centre.
    n_pre_pad = down - half_len % down
    n_pre_remove = (half_len + n_pre_pad) // down
    h = np.concatenate([np.zeros(n_pre_pad), h])
    # y[m] = sum_n h[j - n * up] x[n], j = (m + n_pre_remove) * down (upfirdn, then scipy's crop).
    j = (np.arange(n_out) + n_pre_remove) * down
    phase = j % up
    n_hi = j // up
    tol = 1e-12 * np.abs(h).max()
    taps = []
    for p in range(up):
        g_p = h[p::up]  # g_p[q] multiplies x[n_hi - q]
        q = np.nonzero(np.abs(g_p) > tol)[0][::-1]  # ascending input index
        taps.append((-q, g_p[q]))
    width = max(len(t[0]) for t in taps)
    offs = np.zeros((up, width), np.int64)
    vals = np.zeros((up, width))
    count = np.zeros(up, np.int64)
    for p, (o, v) in enumerate(taps):
        offs[p, :len(o)], vals[p, :len(v)], count[p] = o, v, len(o)
    lo = min(int((n_hi[phase == p] + offs[p, :count[p]].min()).min()) for p in np.unique(phase))
    hi = max(int((n_hi[phase == p] + offs[p, :count[p]].max()).max()) for p in np.unique(phase))
    return Plan(up, down, n_in, n_out, n_hi.astype(np.int64), phase.astype(np.int64), offs, vals, count,
                max(0, -lo), max(0, hi - (n_in - 1)))


@nb.njit(cache=True, fastmath=_FM)
def apply_plan(src, lpad, start, phase, offs, vals, count, n_out, dst, dst_row0):
    """dst[dst_row0 + m, :] = resampled output m for m < n_out; src (lpad + n_in + rpad, L) time-major with
    zero pad rows; vals in the accumulation dtype (dst's)."""
    L = src.shape[1]
    for m in range(n_out):
        p = phase[m]
        s0 = start[m] + lpad
        orow = dst[dst_row0 + m]
        for l in range(L):
            orow[l] = 0
        for i in range(count[p]):
            w = vals[p, i]
            irow = src[s0 + offs[p, i]]
            for l in range(L):  # the SIMD loop
                orow[l] += w * irow[l]


@nb.njit(cache=True, parallel=True, fastmath=_FM)
def _resample_rows(x, lpad, rpad, start, phase, offs, vals, count, n_out, lanes, out):
    R, n = x.shape
    n_groups = (R + lanes - 1) // lanes
    for g in nb.prange(n_groups):
        r0 = g * lanes
        L = min(lanes, R - r0)
        src = np.zeros((lpad + n + rpad, L), np.float32)
        for t in range(n):
            for j in range(L):
                src[lpad + t, j] = x[r0 + j, t]
        dst = np.empty((n_out, L), vals.dtype)
        apply_plan(src, lpad, start, phase, offs, vals, count, n_out, dst, 0)
        for t in range(n_out):
            for j in range(L):
                out[r0 + j, t] = dst[t, j]


def resample_poly(x: np.ndarray, up: int, down: int, *, precision: str = "float32") -> np.ndarray:
    """``scipy.signal.resample_poly(x, up, down, axis=-1)`` for int16/float32 x (..., n) -> float32
    (..., ceil(n * up / down)); the input is rounded to float32 first; ``precision`` is the accumulator's."""
    x = np.asarray(x)
    if x.ndim < 1 or x.dtype.kind not in "iuf":
        raise TypeError(f"x: expected a real array (..., n), got dtype {x.dtype} with shape {x.shape}")
    if int(up) != up or int(down) != down or up <= 0 or down <= 0:
        raise ValueError(f"up, down: expected positive ints, got {up!r}, {down!r}")
    g = math.gcd(int(up), int(down))
    up, down = int(up) // g, int(down) // g
    if up == down == 1:
        return x.astype(np.float32)
    n = x.shape[-1]
    pl = plan(up, down, n)
    rows = np.ascontiguousarray(x.reshape(-1, n))
    out = np.empty((rows.shape[0], pl.n_out), np.float32)
    if rows.shape[0]:
        _resample_rows(rows, pl.lpad, pl.rpad, pl.start, pl.phase, pl.offs, pl.vals.astype(precision), pl.count,
                       pl.n_out, LANES, out)
    return out.reshape(x.shape[:-1] + (pl.n_out,))
