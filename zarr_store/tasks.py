"""Shard tasks: each writes one whole shard file of ``signals`` and then its done marker.

A task is a small picklable description (the store URL, the shard, its records and their first rows),
so the same function runs in-process, in a local process pool or on a Dask worker. Tasks never share a
file, so no locks are needed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from zarr_store.records import N_LEADS, PlannedRecord, record_signal
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
    encoder = ChunkEncoder(ChunkCodec(task.codec, blocksize=N_LEADS * task.window * 2))
    base = task.shard * task.shard_size
    shard = ShardFile(io, task.key, task.shard_size)
    try:
        if task.first_new > base:  # appending into a shard that holds earlier rows: keep their bytes
            old = io.read(task.key)
            if old is not None:
                for i, c in enumerate(split_shard(old, task.shard_size)[: task.first_new - base]):
                    if c is not None:
                        shard.put(i, c)
        lo = max(task.row_start, task.first_new)
        clipped = invalid = 0
        for rec, first in zip(task.records, task.first_rows):
            signal, stats = _signal(rec, task.rate)
            j0, j1 = max(lo - first, 0), min(task.row_end - first, rec.n_windows)
            for j in range(j0, j1):
                shard.put(first + j - base, encoder.encode(_window(signal, j, task.window)))
            if j1 == rec.n_windows:  # count a record's samples once, in the shard holding its last row
                clipped += stats.clipped
                invalid += stats.invalid
            if on_rows is not None and j1 > j0:
                on_rows(j1 - j0)
        shard.commit()
    except BaseException:
        shard.abort()
        raise
    if task.records and task.first_rows[-1] + task.records[-1].n_windows <= task.row_end:
        _LAST[:] = [None, None, None]  # no later shard needs the last record
    result = {"shard": task.shard, "rows": task.row_end - lo, "clipped": clipped, "invalid": invalid,
              "digest": task.digest}
    io.write(task.marker, json.dumps(result).encode())
    return result


def _window(signal: np.ndarray, j: int, window: int) -> np.ndarray:
    """Row ``j`` of a (12, n) signal: window ``j``, C-contiguous, zero-padded at the end."""
    a, b = j * window, min((j + 1) * window, signal.shape[1])
    if b - a == signal.shape[1]:  # the whole record is one row (PTB-XL): no slicing
        return signal
    if b - a == window:
        return np.ascontiguousarray(signal[:, a:b])
    chunk = np.zeros((N_LEADS, window), dtype=np.int16)
    chunk[:, : b - a] = signal[:, a:b]
    return chunk


# The last record converted, kept while the next shard may need it: a record longer than a shard
# (a Holter recording) spans consecutive shards, and in-process they run one after the other.
_LAST: list = [None, None, None]


def _signal(rec: PlannedRecord, rate: int):
    key = (rec.path, rec.n, rate)
    if _LAST[0] != key:
        _LAST[:] = [None, None, None]  # free the previous one before building the next
        _LAST[:] = [key, *record_signal(rec, rate)]
    return _LAST[1], _LAST[2]
