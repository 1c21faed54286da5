"""Shard tasks: each writes one whole shard file of ``signals`` and then its done marker.

A task is a small picklable description (the store URL, the shard, its records and their first rows),
so the same function runs in-process, in a local process pool or on a Dask worker. Tasks never share a
file, so no locks are needed.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass

import numpy as np

from zarr_store.errors import CorruptChunkError
from zarr_store.records import N_LEADS, BadRecord, PlannedRecord, inspect_record, record_signal, release_cache
from zarr_store.shard_writer import ChunkCodec, ChunkEncoder, ShardFile, StoreIO, split_shard


@dataclass(frozen=True)
class ShardTask:
    """Rows [row_start, row_end) of shard ``shard`` (``shard_size`` rows per shard); rows below
    ``first_new`` belong to earlier conversions and are copied from the existing shard file."""

    url: str
    conv_id: str
    shard: int
    shard_size: int
    row_start: int
    row_end: int
    first_new: int
    rate: int
    window: int
    codec: str
    records: tuple[PlannedRecord, ...]
    first_rows: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"signals/c/{self.shard}/0/0"

    @property
    def digest(self) -> str:
        """What the shard holds; a resumed run trusts a marker only if its digest matches."""
        text = json.dumps([self.row_start, self.row_end, self.first_new, self.rate, self.window, self.codec,
                           [(r.path, r.n, r.n_windows, f) for r, f in zip(self.records, self.first_rows)]])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def marker(self) -> str:
        return f"_convert/{self.conv_id}/shard-{self.shard}.json"


def run_shard_task(task: ShardTask, on_rows=None) -> dict:
    """Build and write the shard, then the marker; returns the marker's content (rows, clipped and
    no-data sample counts). ``on_rows(n)`` is called as rows are encoded (progress)."""
    io = StoreIO(task.url)
    encoder = chunk_encoder(task.codec, task.window)
    shard = open_shard(io, task.key, task.shard_size, task.shard * task.shard_size, task.first_new)
    try:
        clipped = invalid = 0
        for rec, first in zip(task.records, task.first_rows):
            signal, stats = _signal(rec, task.rate)
            put, last = put_rows(shard, encoder, task, signal, first, rec.n_windows)
            if last:
                clipped += stats.clipped
                invalid += stats.invalid
            if on_rows is not None and put:
                on_rows(put)
        shard.commit()
    except BaseException:
        shard.abort()
        raise
    if task.records and task.first_rows[-1] + task.records[-1].n_windows <= task.row_end:
        _LAST[:] = [None, None, None]  # no later shard needs the last record
    return write_marker(io, task, clipped, invalid)


def warm_up(codec: str, window: int) -> None:
    """Make this thread's chunk encoder (imports zstandard and bitshuffle, probes the fast path: 10-17
    ms measured) before worker processes are forked from this one, so that they inherit the imports
    and the encoder.
    When the bit-shuffle was a Numba kernel this was 0.45-0.6 s, and spared each worker as much."""
    chunk_encoder(codec, window)


def agrees(predicted: PlannedRecord, real: PlannedRecord | BadRecord) -> bool:
    """True when inspection found the rows the prediction assigned (zarr_store.plan.predict_record):
    a good record of the same frame and row counts."""
    return (isinstance(real, PlannedRecord) and real.path == predicted.path and real.n == predicted.n
            and real.n_windows == predicted.n_windows)


def run_checked_task(args: tuple[ShardTask, float, str | None]) -> dict:
    """The parallel converter's shard task (``args``: the task, the shortest record kept in seconds,
    the conversion's token, which names the headers this process kept when it predicted the
    records: records.keep_header). Its rows were assigned from predicted records
    (plan.predict_record: headers and file sizes only), so each record is inspected here as it is
    read (records.inspect_record, the in-process converter's check), then encoded at once from the
    same samples: each signal file is read once (twice for a record whose rows straddle two
    shards). When an inspection disagrees with the prediction (a flat or all-NaN record, a file
    that fails to read) no shard is written (its temporary file goes); the rest of the task's
    records are still inspected, without being encoded, so that the planner learns every fact at
    once. Returns ``{"marker": the marker (None when not written), "changed": [(k, inspection
    result)] for each task.records[k] that inspection found otherwise (its first 11 fields: all but
    the metadata, which plan.Plan.add may have taken from PTB-XL's table)}``: with one row per
    record that is nearly always none, and sending back every record cost the converting process
    0.25 ms a shard to read."""
    task, min_seconds, token = args
    io = StoreIO(task.url)
    encoder = chunk_encoder(task.codec, task.window)
    changed, ok, clipped, invalid = [], True, 0, 0
    out = np.empty((N_LEADS, 0), dtype=np.int16)
    shard = open_shard(io, task.key, task.shard_size, task.shard * task.shard_size, task.first_new)
    try:
        for k, (rec, first) in enumerate(zip(task.records, task.first_rows)):
            root = rec.path[: len(rec.path) - len(rec.record_id) - 1]
            real = inspect_record(rec.source, root, rec.record_id, task.rate, task.window, min_seconds, keep=ok,
                                  token=token)
            if not isinstance(real, PlannedRecord) or real[:11] != rec[:11]:
                changed.append((k, real))
            if not ok:
                continue
            if not agrees(rec, real):
                ok = False
                shard.abort()
                release_cache()
                continue
            if out.shape[1] != real.n_out:
                out = np.empty((N_LEADS, real.n_out), dtype=np.int16)
            signal, stats = record_signal(real, task.rate, out=out)
            release_cache(real.path)
            if put_rows(shard, encoder, task, signal, first, real.n_windows)[1]:
                clipped += stats.clipped
                invalid += stats.invalid
        if ok:
            shard.commit()
    except BaseException:
        shard.abort()
        release_cache()
        raise
    return {"marker": write_marker(io, task, clipped, invalid) if ok else None, "changed": changed}


class ShardStream:
    """In-process conversion, rows encoded as records arrive: ``add`` encodes a record's rows into
    its shards' files (open until ``finish``), so a record's samples are needed only briefly (see
    plan.run_streaming). Shards in ``skip`` (a marker from an earlier run) are left to
    run_shard_task, which checks the marker's digest. The files are byte for byte those of
    run_shard_task (tested)."""

    def __init__(self, url: str, shard_size: int, first_new: int, rate: int, window: int, codec: str,
                 skip: set[int]):
        self.io, self.size, self.first_new, self.rate, self.window = StoreIO(url), shard_size, first_new, rate, window
        self.encoder = chunk_encoder(codec, window)
        self.skip = skip
        self.open: dict[int, list] = {}  # shard -> [ShardFile (None once committed), clipped, invalid]
        self._out = np.empty((N_LEADS, 0), dtype=np.int16)

    def add(self, rec: PlannedRecord, first: int, signal=None) -> None:
        """Encode the rows of ``rec`` (first row ``first``) that fall in shards this stream writes.
        ``signal``: its (samples, SignalStats) when the caller has them (array items,
        zarr_store.array_convert), else records.record_signal reads them."""
        rows = range(first, first + rec.n_windows)
        if self.skip:
            rows = [r for r in rows if r // self.size not in self.skip]
        if not rows:
            return
        if signal is not None:
            signal, stats = signal
        else:
            if self._out.shape[1] != rec.n_out:
                self._out = np.empty((N_LEADS, rec.n_out), dtype=np.int16)
            signal, stats = record_signal(rec, self.rate, out=self._out)  # encoded at once: one buffer serves
        for r in rows:
            k = r // self.size
            entry = self.open.get(k) or self._new(k)
            entry[0].put(r - k * self.size, self.encoder.encode(_window(signal, r - first, self.window)))
            if r % self.size == self.size - 1:  # the shard's last slot: no chunk can follow, so the
                entry[0].commit()  # file is done now (a long record would hold a file per shard open)
                entry[0] = None
        last = (first + rec.n_windows - 1) // self.size
        if last not in self.skip:  # a record's samples count once, in the shard of its last row
            self.open[last][1] += stats.clipped
            self.open[last][2] += stats.invalid

    def __contains__(self, shard: int) -> bool:
        return shard not in self.skip

    def covers(self, first: int, n: int) -> bool:
        """True when this stream writes every shard holding rows [first, first + n)."""
        return all(k not in self.skip for k in range(first // self.size, (first + n - 1) // self.size + 1))

    def finish(self, task: ShardTask) -> dict:
        """Complete the shard of ``task`` (every row added) and write its marker; returns it."""
        entry = self.open.get(task.shard) or self._new(task.shard)
        if entry[0] is not None:
            entry[0].commit()
        del self.open[task.shard]
        return write_marker(self.io, task, entry[1], entry[2])

    def close(self) -> None:
        """Drop unfinished shards' temporary files (after an error)."""
        for shard, _, _ in self.open.values():
            if shard is not None:
                shard.abort()
        self.open.clear()

    def _new(self, k: int) -> list:
        entry = self.open[k] = [open_shard(self.io, f"signals/c/{k}/0/0", self.size, k * self.size,
                                            self.first_new), 0, 0]
        return entry


_ENCODERS = threading.local()  # (codec, window) -> ChunkEncoder, per thread


def chunk_encoder(codec: str, window: int) -> ChunkEncoder:
    """One per thread and kind: making one probes the codec's fast path (~1 ms), once per shard task
    before. Per thread, not per process: a zstandard compressor must not be used by two threads
    at once (a Dask worker of several threads; shared, 4 threads gave wrong chunks, then crashed).
    A worker process forked from the converting process inherits that thread's (warm_up)."""
    cache = getattr(_ENCODERS, "cache", None)
    if cache is None:
        cache = _ENCODERS.cache = {}
    encoder = cache.get((codec, window))
    if encoder is None:
        encoder = cache[(codec, window)] = ChunkEncoder(ChunkCodec(codec, blocksize=N_LEADS * window * 2))
    return encoder


def open_shard(io: StoreIO, key: str, size: int, base: int, first_new: int) -> ShardFile:
    """A new shard file; when it holds rows of earlier conversions (an append), their encoded chunks
    are copied from the existing file first."""
    kept = []
    if first_new > base:
        old = io.read(key)
        if old is not None:  # read and checked before the new file exists: an error leaves nothing
            try:
                kept = split_shard(old, size)[: first_new - base]
            except ValueError as exc:
                raise CorruptChunkError(f"{key} (rows {base}-{first_new - 1} of earlier conversions): {exc}; "
                                        "cannot append after its rows") from None
    shard = ShardFile(io, key, size)
    try:
        for i, c in enumerate(kept):
            if c is not None:
                shard.put(i, c)
    except BaseException:
        shard.abort()
        raise
    return shard


def write_marker(io: StoreIO, task: ShardTask, clipped: int, invalid: int) -> dict:
    result = {"shard": task.shard, "rows": task.row_end - max(task.row_start, task.first_new),
              "clipped": clipped, "invalid": invalid, "digest": task.digest}
    io.write(task.marker, json.dumps(result).encode())
    return result


def _window(signal: np.ndarray, j: int, window: int) -> np.ndarray:
    """Row ``j`` of a (12, n) signal: window ``j``, C-contiguous, zero-padded at the end."""
    a, b = j * window, min((j + 1) * window, signal.shape[1])
    if b - a == window:  # a whole window: the record itself when it is one (PTB-XL), no copy
        return signal if signal.shape[1] == window else np.ascontiguousarray(signal[:, a:b])
    chunk = np.zeros((N_LEADS, window), dtype=np.int16)
    chunk[:, : b - a] = signal[:, a:b]
    return chunk


# The last record converted, kept while the next shard may need it: a record longer than a shard
# (a Holter recording) spans consecutive shards, and in-process they run one after the other.
_LAST: list = [None, None, None]


def put_rows(shard: ShardFile, encoder: ChunkEncoder, task: ShardTask, signal: np.ndarray, first: int,
             n_windows: int) -> tuple[int, bool]:
    """Encode the rows of one record (first row ``first``, ``n_windows`` rows, samples ``signal``) that
    fall in ``task``'s shard into ``shard``: (rows written, whether the record's last row is among them,
    so that its sample counts belong to this shard, counted once)."""
    base = task.shard * task.shard_size
    j0, j1 = max(max(task.row_start, task.first_new) - first, 0), min(task.row_end - first, n_windows)
    for j in range(j0, j1):
        shard.put(first + j - base, encoder.encode(_window(signal, j, task.window)))
    return max(j1 - j0, 0), j1 == n_windows


def _signal(rec: PlannedRecord, rate: int):
    key = (rec.path, rec.n, rate)
    if _LAST[0] != key:
        _LAST[:] = [None, None, None]  # free the previous one before building the next
        _LAST[:] = [key, *record_signal(rec, rate)]
    return _LAST[1], _LAST[2]
