"""Polyphase resampling of one record, (n, leads) float64 -> (ceil(n * up / down), leads), equal to
``scipy.signal.resample_poly(x, up, down, axis=0)`` with its defaults (Kaiser beta 5 FIR of
20 * max(up, down) + 1 taps, zero padding) up to float rounding (~1e-12 relative: the sums run in
another order).

Why not scipy: resample_poly costs ~700 µs for a CODE-15% exam (400 -> 500 Hz), more than reading,
scanning and encoding it together. Why not crema_fast.data.resample: zarr_store never imports
crema_fast (DESIGN.md). Lanes (the leads of several records side by side) are innermost, contiguous.

The kernel adds four taps at a time into each output row (two independent pairs): adding one tap
at a time loaded and stored the row once per tap, ~1.3x slower here (~400 µs an exam at 400 -> 500
Hz, 16 exams a call). A kernel generated per ratio with every tap a constant was ~1.2x faster
again but took 2-5 s to compile in each process (generated source cannot join numba's file cache).
The input comes padded with zero rows (``pads``), as scipy pads it, so no tap tests its bounds.
"""

from __future__ import annotations

import functools

import numba as nb
import numpy as np


@functools.lru_cache(maxsize=32)
def design(up: int, down: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(offs, vals, count, n_pre_remove): the output sample at upsampled position
    j = (m + n_pre_remove) * down, phase p = j % up, is sum_i vals[p, i] * x[j // up - offs[p, i]]
    for i < count[p]; scipy's filter and alignment. Taps that are zero to rounding (1e-12 of the
    largest: every up-th tap of the sinc, a whole phase of 400 -> 500 Hz but its centre) are
    left out, a fifth of the work there. ``up``, ``down`` in lowest terms."""
    from scipy.signal import firwin

    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * up
    n_pre_pad = down - half_len % down
    h = np.concatenate([np.zeros(n_pre_pad), h])
    tol = 1e-12 * np.abs(h).max()
    phases = [np.flatnonzero(np.abs(h[p::up]) > tol) for p in range(up)]
    width = max(len(q) for q in phases)
    offs, vals = np.zeros((up, width), np.int64), np.zeros((up, width))
    count = np.array([len(q) for q in phases], np.int64)
    for p, q in enumerate(phases):
        offs[p, : len(q)], vals[p, : len(q)] = q, h[p::up][q]
    for a in (offs, vals, count):
        a.flags.writeable = False
    return offs, vals, count, (half_len + n_pre_pad) // down


@nb.njit(cache=True, nogil=True, fastmath={"contract"})
def _apply(xp, lpad, offs, vals, count, down, up, pre, out):
    n_lanes = xp.shape[1]
    for m in range(out.shape[0]):
        j = (m + pre) * down
        hi = j // up
        p = j - hi * up
        h = hi + lpad
        k = count[p]
        for c in range(n_lanes):
            out[m, c] = 0.0
        i = 0
        while i + 4 <= k:
            w0, w1, w2, w3 = vals[p, i], vals[p, i + 1], vals[p, i + 2], vals[p, i + 3]
            r0, r1, r2, r3 = h - offs[p, i], h - offs[p, i + 1], h - offs[p, i + 2], h - offs[p, i + 3]
            for c in range(n_lanes):  # the SIMD loop: lanes = leads of several records
                out[m, c] += (w0 * xp[r0, c] + w1 * xp[r1, c]) + (w2 * xp[r2, c] + w3 * xp[r3, c])
            i += 4
        while i < k:
            w, r = vals[p, i], h - offs[p, i]
            for c in range(n_lanes):
                out[m, c] += w * xp[r, c]
            i += 1


def pads(up: int, down: int) -> tuple[int, int]:
    """(rows before, rows after) of zeros that ``resample_padded`` needs around its input."""
    offs, _, _, pre = design(up, down)
    return int(offs.max()), -(-pre * down // up) + 1


def resample_padded(xp: np.ndarray, lpad: int, n: int, up: int, down: int) -> np.ndarray:
    """``resample`` of x = xp[lpad : lpad + n], where xp (rows, lanes) float64 C-order holds at least
    ``pads(up, down)`` rows of zeros before and after x: (ceil(n * up / down), lanes) float64."""
    lp, rp = pads(up, down)
    if lpad < lp or xp.shape[0] - lpad - n < rp:
        raise ValueError(f"xp: expected {lp} zero rows before and {rp} after the input, got {lpad} and "
                         f"{xp.shape[0] - lpad - n}")
    offs, vals, count, pre = design(up, down)
    out = np.empty((-(-n * up // down), xp.shape[1]))
    _apply(xp, lpad, offs, vals, count, down, up, pre, out)
    return out


def resample(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``x`` (n, lanes) float64 resampled by up / down (lowest terms) along axis 0:
    (ceil(n * up / down), lanes) float64. Lanes are independent: the leads of several records of
    different lengths can share one call, each zero after its own end (scipy pads with zeros too),
    and each record's output is then its first ceil(n_k * up / down) samples."""
    if (up, down) == (1, 1):
        return x
    lp, rp = pads(up, down)
    xp = np.zeros((lp + len(x) + rp, x.shape[1]))
    xp[lp : lp + len(x)] = x
    return resample_padded(xp, lp, len(x), up, down)
