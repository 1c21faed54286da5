"""The preprocessing pipeline on a batch, one parallel Numba kernel (ST-MEM's order):

    int16 µV (B, 12, T) at the store rate
      -> float32, resampled to the model rate (resample_poly; skipped when the rates are equal)
      -> zero-phase band-pass (+ notch) at the model rate (sosfiltfilt over each record's valid samples)
      -> crop of ``crop`` samples (seeded random start within the valid length; centre for evaluation)
      -> z-score per record over its present leads (or per lead), flat signals -> zeros
      -> float32 (B, 12, crop); leads absent in lead_mask are exactly zero.

Records are processed in groups of ``GROUP`` records with the same valid length; a group's 12 * GROUP
channels sit side by side in a time-major buffer, 64 lanes per block (see filters.py for why), and groups
run in parallel (``prange``). Samples past a record's valid length (short records) are zero in the output.
A record too short for scipy's pad length (n <= padlen) is padded over n - 1 samples instead (scipy would
refuse it); one of a single sample is not filtered.

Measured on one core (benchmarks/bench_data.py): the stages cost, per 10 s ECG from a 500 Hz store, about
38 µs int16 -> float32 transpose, 55 µs resampling, 41 µs (float32 state) / 90 µs (float64 state) filtering,
20 µs crop transpose, 13 µs z-score (sums in a fixed order; fastmath's reassociation gave 9 µs).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from crema_fast.data import filters, resample
from crema_fast.data.config import DataConfig

GROUP = 16  # records per group: 192 channels = 3 blocks of 64 lanes, no lane wasted
BLOCK = filters.LANES
FLAT_STD = 0.5  # µV: below half the store's 1 µV step a signal is flat; it is output as zeros
_FM = {"contract"}


@nb.njit(cache=True, fastmath=_FM)
def _zscore_rows(x, m, flat):
    """In place over rows x[i, :m] (float32): (x - mean) / std, with sums in float64 (one pass for the
    sum and the sum of squares: at float64 a band-passed ECG's offset cannot cancel its variance); a row
    set whose std is below ``flat`` becomes zeros. x: (R, C) contiguous rows of one record (or one lead).

    No reassociation (the file's contract): the sums run in four explicit interleaved accumulators,
    combined in a fixed order, which gives the speed fastmath's reassociation gave (four independent
    add chains) with a result that does not depend on the compiler."""
    cnt = x.shape[0] * m
    if cnt == 0:
        return
    s0 = s1 = s2 = s3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    m4 = m - m % 4
    for i in range(x.shape[0]):
        row = x[i]
        for c in range(0, m4, 4):
            v0 = np.float64(row[c])
            v1 = np.float64(row[c + 1])
            v2 = np.float64(row[c + 2])
            v3 = np.float64(row[c + 3])
            s0 += v0
            s1 += v1
            s2 += v2
            s3 += v3
            q0 += v0 * v0
            q1 += v1 * v1
            q2 += v2 * v2
            q3 += v3 * v3
        for c in range(m4, m):
            v0 = np.float64(row[c])
            s0 += v0
            q0 += v0 * v0
    s = (s0 + s1) + (s2 + s3)
    q = (q0 + q1) + (q2 + q3)
    mean = s / cnt
    var = max(q / cnt - mean * mean, 0.0)
    std = np.sqrt(var)
    scale = 1.0 / std if std > flat else 0.0
    for i in range(x.shape[0]):
        for c in range(m):
            x[i, c] = np.float32((x[i, c] - mean) * scale)


@nb.njit(cache=True)
def _zscore_record(x, present, m, per_lead, flat):
    """One record's output x (12, crop) in place: z-score its present leads over their first m samples,
    together (record mode) or one by one; absent leads become zeros."""
    NL = x.shape[0]
    for ld in range(NL):
        if not present[ld]:
            x[ld, :] = 0.0
    if per_lead:
        for ld in range(NL):
            if present[ld]:
                _zscore_rows(x[ld:ld + 1], m, flat)
        return
    # present leads only: move them to the front, z-score together, move back (absent stay 0)
    k = 0
    for ld in range(NL):
        if present[ld]:
            if k != ld:
                x[k, :] = x[ld, :]
            k += 1
    _zscore_rows(x[:k], m, flat)
    for ld in range(NL - 1, -1, -1):
        if present[ld]:
            k -= 1
            if k != ld:
                x[ld, :] = x[k, :]
                x[k, :] = 0.0


@nb.njit(cache=True)
def _load_lanes(sig_flat, src_off, buf, p, n):
    """int16 -> float32 transpose: buf[p + t, j] = sig_flat[src_off[j] + t] for t < n, j < L. Tiles of 8
    samples of one channel (one 16-byte load each): 1.2x faster than one time step over all lanes."""
    L = buf.shape[1]
    n8 = n - n % 8
    for t0 in range(0, n8, 8):
        r = p + t0
        for j in range(L):
            o = src_off[j] + t0
            buf[r, j] = sig_flat[o]
            buf[r + 1, j] = sig_flat[o + 1]
            buf[r + 2, j] = sig_flat[o + 2]
            buf[r + 3, j] = sig_flat[o + 3]
            buf[r + 4, j] = sig_flat[o + 4]
            buf[r + 5, j] = sig_flat[o + 5]
            buf[r + 6, j] = sig_flat[o + 6]
            buf[r + 7, j] = sig_flat[o + 7]
    for t in range(n8, n):
        row = buf[p + t]
        for j in range(L):
            row[j] = sig_flat[src_off[j] + t]


@nb.njit(cache=True, fastmath=_FM)
def _group(recs, ws, sig, lead_mask, n_model, starts, do_resample, lpad, rpad, r_start, r_phase,
           r_offs, r_vals, r_count, coef, zi, pad, per_lead, flat, out):
    """The whole pipeline for one group of records sharing a valid length (``recs``: their rows).
    ws: float32 scratch of at least (n + 2 * pad + lpad + T + rpad) * BLOCK elements (see ``preprocess``),
    reused across the groups a thread runs."""
    B, NL, T = sig.shape
    crop = out.shape[2]
    sig_flat = sig.reshape(-1)
    out_flat = out.reshape(-1)
    n = n_model[recs[0]]
    p = min(pad, n - 1) if n > 1 else 0
    n_ch = recs.shape[0] * NL
    done = 0
    for c0 in range(0, n_ch, BLOCK):
        L = min(BLOCK, n_ch - c0)
        # flat offsets of each lane's channel: indexing sig[rec, lead, t] per sample cost 2x more
        src_off = np.empty(L, np.int64)
        dst_off = np.empty(L, np.int64)
        row0 = np.empty(L, np.int64)
        m_min = crop
        for j in range(L):
            r = recs[(c0 + j) // NL]
            ch = r * NL + (c0 + j) % NL
            src_off[j] = ch * T
            dst_off[j] = ch * crop
            row0[j] = p + starts[r]
            m_min = min(m_min, n - starts[r])
        # float32 storage; the filter state is coef.dtype
        buf = ws[:(n + 2 * p) * L].reshape((n + 2 * p, L))
        if do_resample:
            off = (n + 2 * p) * BLOCK
            src = ws[off:off + (lpad + T + rpad) * L].reshape((lpad + T + rpad, L))
            src[:lpad] = 0.0
            src[lpad + T:] = 0.0
            for t in range(T):
                row = src[lpad + t]
                for j in range(L):
                    row[j] = sig_flat[src_off[j] + t]
            resample.apply_plan(src, lpad, r_start, r_phase, r_offs, r_vals, r_count, n, buf, p)
        else:
            _load_lanes(sig_flat, src_off, buf, p, n)
        if n > 1:
            # only rows from the earliest crop start on are read below: the backward pass stops there
            lo = row0[0]
            for j in range(1, L):
                lo = min(lo, row0[j])
            filters.filtfilt_from(buf, n, p, coef, zi, lo)
        # Crop, time-major buffer -> (B, 12, crop), in tiles of 8 samples x 4 lanes (4 lanes are always
        # one record's, with one crop start, when records take a multiple of 4 lanes): 2x faster than a
        # sample at a time (which in turn beat reading the buffer column by column, a miss per sample).
        m_tile = m_min - m_min % 8 if NL % 4 == 0 else 0
        for t0 in range(0, m_tile, 8):
            for j0 in range(0, L, 4):
                tile = buf[row0[j0] + t0:row0[j0] + t0 + 8, j0:j0 + 4]
                for a in range(4):
                    o = dst_off[j0 + a] + t0
                    out_flat[o] = tile[0, a]
                    out_flat[o + 1] = tile[1, a]
                    out_flat[o + 2] = tile[2, a]
                    out_flat[o + 3] = tile[3, a]
                    out_flat[o + 4] = tile[4, a]
                    out_flat[o + 5] = tile[5, a]
                    out_flat[o + 6] = tile[6, a]
                    out_flat[o + 7] = tile[7, a]
        for c in range(m_tile, m_min):
            for j in range(L):
                out_flat[dst_off[j] + c] = buf[row0[j] + c, j]
        for j in range(L):
            m = min(crop, n - (row0[j] - p))
            for c in range(m_min, m):
                out_flat[dst_off[j] + c] = buf[row0[j] + c, j]
            for c in range(m, crop):
                out_flat[dst_off[j] + c] = 0.0
        # z-score the records this block completed while their rows are still in cache (a pass over the
        # whole group's output afterwards came back from memory)
        while done < recs.shape[0] and (done + 1) * NL <= c0 + L:
            r = recs[done]
            _zscore_record(out[r], lead_mask[r], min(crop, n - starts[r]), per_lead, flat)
            done += 1


@nb.njit(cache=True, parallel=True)
def _pipeline_parallel(n_threads, order, gptr, ws_size, sig, lead_mask, n_model, starts, do_resample, lpad, rpad,
                       r_start, r_phase, r_offs, r_vals, r_count, coef, zi, pad, per_lead, flat, out):
    n_groups = gptr.shape[0] - 1
    n_chunks = min(n_groups, n_threads)
    for c in nb.prange(n_chunks):  # one scratch buffer per thread, groups dealt round-robin
        ws = np.empty(ws_size, np.float32)
        for g in range(c, n_groups, n_chunks):
            _group(order[gptr[g]:gptr[g + 1]], ws, sig, lead_mask, n_model, starts, do_resample, lpad, rpad,
                   r_start, r_phase, r_offs, r_vals, r_count, coef, zi, pad, per_lead, flat, out)


@nb.njit(cache=True)
def _pipeline_serial(n_threads, order, gptr, ws_size, sig, lead_mask, n_model, starts, do_resample, lpad, rpad,
                     r_start, r_phase, r_offs, r_vals, r_count, coef, zi, pad, per_lead, flat, out):
    # No threading layer at all: safe in forked DataLoader workers (GNU OpenMP is not fork-safe).
    ws = np.empty(ws_size, np.float32)
    for g in range(gptr.shape[0] - 1):
        _group(order[gptr[g]:gptr[g + 1]], ws, sig, lead_mask, n_model, starts, do_resample, lpad, rpad,
               r_start, r_phase, r_offs, r_vals, r_count, coef, zi, pad, per_lead, flat, out)


def model_lengths(valid_length: np.ndarray, store_rate: int, model_rate: int, window: int) -> np.ndarray:
    """Valid samples at the model rate (resample_poly's output length, at most the resampled window)."""
    up, down = resample.ratio(store_rate, model_rate)
    v = np.clip(np.asarray(valid_length, np.int64), 0, window)
    return np.minimum(resample.out_length(v, up, down), resample.out_length(window, up, down))


def crop_starts(n_model: np.ndarray, crop: int, rng: np.random.Generator | None, train: bool) -> np.ndarray:
    """Crop start per record: uniform over [0, n - crop] when training (seeded by ``rng``), the centre
    otherwise; 0 when a record is shorter than the crop."""
    slack = np.maximum(np.asarray(n_model, np.int64) - crop, 0)
    if not train:
        return slack // 2
    if rng is None:
        raise ValueError("rng: expected a numpy Generator for random crops (train=True), got None")
    return rng.integers(0, slack + 1).astype(np.int64)


def _groups(n_model: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(n_model, kind="stable").astype(np.int64)
    keys = n_model[order]
    runs = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1, [len(keys)]])
    ptr = [np.arange(a, b, GROUP) for a, b in zip(runs[:-1], runs[1:])]
    return order, np.concatenate(ptr + [np.array([len(keys)])]).astype(np.int64)


def preprocess(signals: np.ndarray, lead_mask: np.ndarray, valid_length: np.ndarray, store_rate: int,
               cfg: DataConfig, *, rng: np.random.Generator | None = None, train: bool = True,
               starts: np.ndarray | None = None, parallel: bool = True, out: np.ndarray | None = None
               ) -> np.ndarray:
    """Run the pipeline on a batch.

    signals int16 (B, 12, T) µV at ``store_rate`` Hz; lead_mask bool (B, 12); valid_length int (B,) samples
    at the store rate; rng: the crop generator (train=True); starts: explicit crop starts at the model rate
    (override); parallel: groups on Numba's threads (False: in the calling thread only, for DataLoader
    workers; the results are identical); out: a C-contiguous float32 (B, 12, cfg.crop) array to write into
    (e.g. shared memory, or a reused buffer: fresh memory costs page faults). Returns float32 (B, 12, cfg.crop).
    """
    signals = np.ascontiguousarray(signals)
    if signals.ndim != 3 or signals.dtype != np.int16:
        raise TypeError(f"signals: expected int16 (B, 12, T), got {signals.dtype} {signals.shape}")
    B, n_leads, T = signals.shape
    lead_mask = np.ascontiguousarray(lead_mask, dtype=np.bool_)
    if lead_mask.shape != (B, n_leads):
        raise ValueError(f"lead_mask: expected shape {(B, n_leads)}, got {lead_mask.shape}")
    valid_length = np.asarray(valid_length)
    if valid_length.shape != (B,):
        raise ValueError(f"valid_length: expected shape {(B,)}, got {valid_length.shape}")
    n_model = model_lengths(valid_length, store_rate, cfg.model_rate, T)
    if starts is None:
        starts = crop_starts(n_model, cfg.crop, rng, train)
    starts = np.ascontiguousarray(starts, dtype=np.int64)
    if starts.shape != (B,) or (starts < 0).any() or (starts > np.maximum(n_model - cfg.crop, 0)).any():
        raise ValueError(f"starts: expected (B,) crop starts within each record's valid length, got {starts}")
    up, down = resample.ratio(store_rate, cfg.model_rate)
    pl = resample.plan(up, down, T) if (up, down) != (1, 1) else resample.plan(1, 2, 8)  # dummy when unused
    sos = filters.design_sos(cfg.model_rate, cfg.highpass, cfg.lowpass, cfg.filter_order, cfg.notch, cfg.notch_q)
    coef, zi = filters.prepared(sos, cfg.precision)
    order, gptr = _groups(n_model)
    if out is None:
        out = np.empty((B, n_leads, cfg.crop), np.float32)
    elif out.shape != (B, n_leads, cfg.crop) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected C-contiguous float32 {(B, n_leads, cfg.crop)}, got {out.dtype} {out.shape}")
    if B:
        run = _pipeline_parallel if parallel else _pipeline_serial
        pad = filters.padlen(sos)
        ws_size = (int(n_model.max()) + 2 * pad + pl.lpad + T + pl.rpad) * BLOCK
        run(nb.get_num_threads(), order, gptr, ws_size, signals, lead_mask, n_model, starts, (up, down) != (1, 1),
            pl.lpad, pl.rpad, pl.start, pl.phase, pl.offs, pl.vals.astype(np.float32), pl.count, coef, zi, pad,
            cfg.zscore == "lead", FLAT_STD, out)
    return out
