"""Check every byte of a store that a read could trip on: ``verify_store(store) -> Verification``.

Opening a store reads only ``zarr.json`` files, and a batch reads only the shards it needs, so a shard
cut short by a full disk or a flipped byte inside a chunk stays unseen until training reaches it.
This reads each ``signals`` shard file's index (its crc32c, every chunk inside the file), decodes every
chunk (checking each chunk's crc32c where the store has one) and reads every metadata array through
zarr. Problems are reported by file and store rows, never raised, so one report lists them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from zarr_store.errors import StoreError
from zarr_store.reader import SIGNALS, StoreReader

_BATCH = 64  # rows decoded at once: 7.7 MB of int16 at 12 x 5000


@dataclass(frozen=True)
class Problem:
    """One bad file or span of rows: ``rows`` = (first, last) store rows, inclusive."""

    file: str
    rows: tuple[int, int]
    reason: str

    def __str__(self) -> str:
        return f"{self.file} (rows {self.rows[0]}..{self.rows[1]}): {self.reason}"


@dataclass
class Verification:
    store: str
    shards: int = 0  # signals shard files checked
    chunks: int = 0  # rows decoded
    arrays: int = 0  # metadata arrays read
    chunk_crc: bool = False  # whether the chunks carry a crc32c (else a flipped byte may decode)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(store) -> Verification:
    """Read every shard index, chunk and metadata array of ``store``; see the module docstring."""
    reader = StoreReader(store)
    out = Verification(reader.store, chunk_crc=bool(reader.layout and reader.layout.chunk_crc))
    n = len(reader)
    rows_per_file = reader.layout.shard_rows if reader.layout is not None else max(reader.shard_rows, 1)
    for lo in range(0, n, rows_per_file):
        hi = min(lo + rows_per_file, n) - 1
        out.shards += 1
        if reader.layout is not None:
            path = reader._shard_path(lo // rows_per_file)
            if not reader._url and not os.path.isfile(path):
                out.problems.append(Problem(path, (lo, hi), "missing shard file (its rows read as zeros)"))
                continue
            try:
                reader._index(lo // rows_per_file)
            except StoreError as exc:
                out.problems.append(Problem(path, (lo, hi), str(exc)))
                continue
        else:
            path = f"{reader.store}/{SIGNALS}"
        out.chunks += _check_rows(reader, path, lo, hi, out.problems)
    _check_arrays(reader, out)
    return out


def _check_rows(reader: StoreReader, path: str, lo: int, hi: int, problems: list[Problem]) -> int:
    """Decode rows lo..hi in batches; a batch that fails is decoded row by row to name the bad rows."""
    buf = None
    for a in range(lo, hi + 1, _BATCH):
        rows = np.arange(a, min(a + _BATCH, hi + 1))
        if buf is None or len(buf) != len(rows):
            buf = np.empty((len(rows),) + reader.shape[1:], dtype=reader.dtype)
        try:
            reader.read_signals(rows, out=buf)
            continue
        except Exception:  # noqa: BLE001 - found again, row by row, with its message
            pass
        bad: list[tuple[int, str]] = []
        for r in rows.tolist():
            try:
                reader.read_signals([r])
            except Exception as exc:  # noqa: BLE001 - a report, not a crash: zarr raises plain errors
                bad.append((r, str(exc) or type(exc).__name__))
        problems += _spans(path, bad)
    return hi - lo + 1


def _spans(path: str, bad: list[tuple[int, str]]) -> list[Problem]:
    """Consecutive bad rows as one Problem (the first row's message)."""
    spans: list[Problem] = []
    for r, why in bad:
        if spans and spans[-1].rows[1] == r - 1:
            spans[-1] = Problem(path, (spans[-1].rows[0], r), spans[-1].reason)
        else:
            spans.append(Problem(path, (r, r), why))
    return spans


def _check_arrays(reader: StoreReader, out: Verification) -> None:
    import zarr

    try:
        group = zarr.open_group(reader.store, mode="r")
        names = sorted(k for k in group.array_keys() if k != SIGNALS)
    except Exception as exc:  # noqa: BLE001
        out.problems.append(Problem(reader.store, (0, len(reader) - 1), f"cannot list its arrays: {exc}"))
        return
    for name in names:
        out.arrays += 1
        try:
            group[name][...]
        except Exception as exc:  # noqa: BLE001 - zarr raises ValueError, KeyError, ... on bad files
            out.problems.append(Problem(f"{reader.store}/{name}", (0, len(reader) - 1),
                                        f"{type(exc).__name__}: {exc}"))
