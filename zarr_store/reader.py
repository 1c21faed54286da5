"""Batched random access to a crema-fast Zarr v3 store: cached shard indexes, chunks decoded directly.

zarr 3's own indexing of a sharded array re-reads each shard's index on every call and turns an
orthogonal selection into per-element coordinates: 190–720 ECG/s per core for random batches
(../shared/notes/zarr-store.md). ``StoreReader`` parses ``zarr.json`` once, reads and caches each
shard's index once (checking its crc32c), and decodes the chunks a batch needs with Blosc straight into
the output buffer: from memory-mapped shard files locally (no copy out of the page cache), from fsspec
range reads remotely (chunks adjacent in a file fetched as one range, all ranges in one ``cat_ranges``
call), each chunk's crc32c checked when the store has one (CorruptChunkError naming the shard file
and rows otherwise). The ``numcodecs.delta`` filter is undone by a Numba int16 prefix sum. A batch decodes each chunk
once however often it repeats rows. Stores it cannot read that way (other codecs, no sharding, index at
the start, file systems without range reads) are read through zarr's API instead; ``path_kind`` says
which ("direct" or "zarr") and ``fallback_reason`` why.

Small per-record arrays (lead_mask, valid_length, metadata columns) are loaded whole on first use.
The reader is picklable: mappings and caches are dropped and rebuilt lazily in each process
(DataLoader workers, spawn or fork; a fork is detected by its pid). Threads may share one reader:
per-call state is local and the caches only grow. A reader sees the store as it was when opened
(rows, shard indexes): reopen it to see rows appended since.
"""

from __future__ import annotations

import io
import json
import mmap
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
import numba
import numcodecs.blosc
import numpy as np

from zarr_store._read_layout import EMPTY, ShardLayout, parse_shard_layout
from zarr_store.errors import BadArgumentError, CorruptChunkError, MissingColumnError
from zarr_store.paths import is_url

SIGNALS = "signals"
# Shard files kept mapped per process: a store of 1M records has ~2,000 (~46 GB at zstd), which a
# 64-bit address space holds; the page tables grow only with what is touched.
_MAX_MAPPED = 4096


@dataclass(frozen=True)
class ReadBatch:
    """Rows of the store in the order asked for.

    signals: int16 (B, 12, T) µV; lead_mask: bool (B, 12); valid_length: int32 (B,) samples;
    index: int64 (B,) store rows; meta: requested metadata columns, each (B,).
    """

    signals: np.ndarray
    lead_mask: np.ndarray
    valid_length: np.ndarray
    index: np.ndarray
    meta: dict[str, np.ndarray] = field(default_factory=dict)


@numba.njit(cache=True, nogil=True)
def _undelta_rows(a, rows):  # pragma: no cover - compiled
    """In-place inverse of numcodecs' Delta on rows of a (B, L) int array: wrapping prefix sums."""
    for r in rows:
        acc = 0
        for i in range(a.shape[1]):
            acc += a[r, i]
            a[r, i] = acc
    return a


class StoreReader:
    """Open a store once; ``read(indices)`` returns any rows, in order, repeats allowed.

    store: a local path or an fsspec URL (``memory://``, ``s3://``, ...). mode: "auto" reads
    directly where it can and falls back to zarr otherwise; "zarr" forces zarr's API (for
    comparisons); "direct" raises BadArgumentError when the store cannot be read directly.
    """

    def __init__(self, store: str | os.PathLike, *, mode: str = "auto"):
        if mode not in ("auto", "direct", "zarr"):
            raise BadArgumentError(f"mode: expected 'auto', 'direct' or 'zarr', got {mode!r}")
        self.store = str(store)
        self.mode = mode
        self._url = is_url(self.store)
        if not self._url:
            self.store = self.store.removeprefix("file://")
        self._reset()
        group_meta = self._read_json("zarr.json")
        if group_meta is None and not self._url and not os.path.exists(self.store):
            raise BadArgumentError(f"store {self.store}: no such file or folder")
        if group_meta is None:
            raise BadArgumentError(f"store {self.store}: expected a Zarr v3 group with a {SIGNALS!r} array, got "
                                   f"no {os.path.join(self.store, 'zarr.json') if not self._url else 'zarr.json'}")
        if group_meta.get("zarr_format") != 3 or group_meta.get("node_type") != "group":
            raise BadArgumentError(f"store {self.store}: expected a Zarr v3 group with a {SIGNALS!r} array, got "
                                   f"zarr_format={group_meta.get('zarr_format')!r} "
                                   f"node_type={group_meta.get('node_type')!r} in its zarr.json")
        self.attrs: dict = group_meta.get("attributes", {})
        meta = self._read_json(f"{SIGNALS}/zarr.json")
        if meta is None:
            raise BadArgumentError(f"store {self.store}: no {SIGNALS!r} array (no {SIGNALS}/zarr.json)")
        self.shape = tuple(int(s) for s in meta["shape"])
        self.dtype = np.dtype(meta["data_type"])
        layout, reason = parse_shard_layout(SIGNALS, meta) if mode != "zarr" else (None, "mode='zarr'")
        if layout is None and mode == "direct":
            raise BadArgumentError(f"store: cannot read {self.store!r} directly: {reason}")
        self.layout: ShardLayout | None = layout
        self.fallback_reason = reason
        self.rate = int(self.attrs.get("rate", 0))
        self.window = int(self.attrs.get("window", self.shape[-1]))
        self.leads = list(self.attrs.get("leads", []))
        # Rows per shard file (per chunk file when unsharded): the unit a shard-order loader groups by.
        self.shard_rows = int(meta.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [1])[0])

    # ---- process-local state (dropped on pickling, rebuilt lazily) ----

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._maps: OrderedDict[int, memoryview] = OrderedDict()
        self._indexes: dict[int, np.ndarray] = {}
        self._columns: dict[str, np.ndarray] = {}
        self._absent: set[str] = set()
        self._group = None
        self._fs = None
        self._fs_root = ""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_maps", "_indexes", "_columns", "_absent", "_group", "_fs"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def close(self) -> None:
        """Unmap the shard files this process mapped (the reader stays usable and maps them again)."""
        self._maps = OrderedDict()  # each map closes once the last view of it is gone

    def _check_pid(self) -> None:
        # A forked worker shares the parent's descriptors and fsspec loop: start afresh in the child.
        if self._pid != os.getpid():
            self._reset()

    # ---- properties ----

    @property
    def path_kind(self) -> str:
        """"direct" (our reader) or "zarr" (zarr's API: the fallback)."""
        return "direct" if self.layout is not None else "zarr"

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return (f"StoreReader({self.store!r}, rows={len(self)}, rate={self.rate}, window={self.window}, "
                f"path_kind={self.path_kind!r})")

    # ---- file access ----

    def _filesystem(self):
        if self._fs is None:
            import fsspec

            self._fs, self._fs_root = fsspec.url_to_fs(self.store)
        return self._fs

    def _read_json(self, rel: str) -> dict | None:
        try:
            if self._url:
                fs = self._filesystem()
                raw = fs.cat_file(f"{self._fs_root.rstrip('/')}/{rel}")
            else:
                raw = Path(self.store, rel).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BadArgumentError(f"store: {rel} in {self.store!r} is not valid JSON: {exc}") from None

    def _shard_path(self, shard: int) -> str:
        rel = f"{SIGNALS}/{self.layout.shard_key(shard)}"
        return f"{self._fs_root.rstrip('/')}/{rel}" if self._url else os.path.join(self.store, rel)

    def _map(self, shard: int) -> memoryview:
        """A local shard file, memory-mapped read-only, so that chunks decode straight from the page
        cache: a pread per chunk copies ~50 kB, ~15 µs, a quarter of an lz4 decode. Shard files are
        replaced atomically by the converter, never truncated in place, so a mapping stays valid."""
        view = self._maps.get(shard)
        if view is None:
            with open(self._shard_path(shard), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)) if size else memoryview(b"")
            self._maps[shard] = view
            if len(self._maps) > _MAX_MAPPED:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(shard)
        return view

    def _shard_span(self, shard: int) -> str:
        lo = shard * self.layout.shard_rows
        return f"rows {lo}..{min(lo + self.layout.shard_rows, len(self)) - 1}"

    def _index(self, shard: int) -> np.ndarray:
        """(chunks_per_shard, 2) uint64 (offset, nbytes) of the shard's inner chunks, cached."""
        index = self._indexes.get(shard)
        if index is not None:
            return index
        lay = self.layout
        n = lay.index_nbytes
        try:
            if self._url:
                raw = self._filesystem().cat_file(self._shard_path(shard), start=-n)
                size = None
            else:
                data = self._map(shard)
                size = len(data)
                raw = bytes(data[size - n:]) if size >= n else b""
        except FileNotFoundError:  # a shard never written holds only fill values
            index = np.full((lay.chunks_per_shard, 2), EMPTY, dtype=np.uint64)
            self._indexes[shard] = index
            return index
        where = f"{SIGNALS} shard file {self._shard_path(shard)} ({self._shard_span(shard)})"
        if len(raw) != n:
            raise CorruptChunkError(f"{where}: expected a shard index of {n} bytes, got {len(raw)}")
        body = raw[: 16 * lay.chunks_per_shard]
        if lay.index_crc:
            want = int.from_bytes(raw[-4:], "little")
            got = google_crc32c.value(body)
            if got != want:
                raise CorruptChunkError(f"{where}: shard index crc32c mismatch (stored {want:#010x}, "
                                        f"computed {got:#010x})")
        index = np.frombuffer(body, dtype="<u8").reshape(lay.chunks_per_shard, 2)
        if size is not None:
            full = index[:, 0] != EMPTY
            if np.any(index[full, 0] + index[full, 1] > size - n):
                bad = int(np.flatnonzero(full & (index[:, 0] + index[:, 1] > size - n))[0])
                raise CorruptChunkError(f"{where}: chunk {bad} points past the end of the file")
        self._indexes[shard] = index
        return index

    def _fetch_coalesced(self, shard: int, off: np.ndarray, nb: np.ndarray) -> tuple[list, list[int], list[int]]:
        """Remote chunks sorted by offset -> (blobs, their starts, blob of each chunk): chunks back to back
        in the file are fetched as one range, and all ranges in one ``cat_ranges`` call (concurrent on
        object stores)."""
        breaks = np.flatnonzero(off[1:] != off[:-1] + nb[:-1]) + 1
        first, last = np.r_[0, breaks], np.r_[breaks - 1, len(off) - 1]
        starts = off[first].tolist()
        ends = (off[last] + nb[last]).tolist()
        path = self._shard_path(shard)
        blobs = self._filesystem().cat_ranges([path] * len(starts), starts, ends)
        run_of = (np.searchsorted(np.asarray(starts), off, side="right") - 1).tolist()
        return blobs, starts, run_of

    # ---- reading ----

    def _indices(self, indices) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.ndim != 1:
            idx = idx.reshape(-1)
        if idx.size and idx.dtype.kind not in "iu":
            raise TypeError(f"indices: expected integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            bad = idx[(idx < -n) | (idx >= n)][0]
            raise IndexError(f"indices: expected rows in [-{n}, {n}), got {bad}")
        return np.where(idx < 0, idx + n, idx)

    def read_signals(self, indices, out: np.ndarray | None = None) -> np.ndarray:
        """int16 (B, 12, T) signals of the rows ``indices`` (any order, repeats allowed), in that order.

        out: optional C-contiguous array of that shape and dtype to decode into (returned).
        """
        self._check_pid()
        idx = self._indices(indices)
        shape = (len(idx),) + self.shape[1:]
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype or not out.flags.c_contiguous:
            raise ValueError(f"out: expected a C-contiguous {self.dtype} array of shape {shape}, "
                             f"got {out.dtype} {out.shape} (contiguous={out.flags.c_contiguous})")
        if len(idx) == 0:
            return out
        if self.layout is None:
            return self._read_zarr(idx, out)
        try:
            return self._read_direct(idx, out)
        except (NotImplementedError, io.UnsupportedOperation) as exc:
            if not self._url or self.mode == "direct":
                raise
            # A file system without (batched) range reads: leave the reading to zarr's API.
            self.layout, self.fallback_reason = None, f"range reads failed: {exc!r}"
            return self._read_zarr(idx, out)

    def _read_direct(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        lay = self.layout
        k = lay.chunk_rows
        chunk_of = idx // k
        chunks, first, inverse = np.unique(chunk_of, return_index=True, return_inverse=True)
        flat = out.reshape(len(idx), -1)
        present_all = np.zeros(len(chunks), dtype=bool)
        scratch = None if k == 1 else np.empty((k,) + self.shape[1:], dtype=self.dtype)
        shards = chunks // lay.chunks_per_shard
        bounds = np.flatnonzero(np.diff(shards)) + 1
        for group in np.split(np.arange(len(chunks)), bounds):
            shard = int(shards[group[0]])
            index = self._index(shard)
            local = (chunks[group] - shard * lay.chunks_per_shard).tolist()
            offsets = index[local, 0]
            nbytes = index[local, 1]
            present = offsets != EMPTY
            present_all[group] = present
            order = np.argsort(offsets[present], kind="stable")
            g_present = group[present][order]
            off = offsets[present][order].astype(np.int64)
            nb = nbytes[present][order].astype(np.int64)
            for g in group[~present].tolist():  # never written: fill value
                if k == 1:
                    out[first[g]] = lay.fill_value
                else:
                    rows_here = np.flatnonzero(inverse == g)
                    out[rows_here] = lay.fill_value
            if not len(off):
                continue
            if self._url:
                blobs, starts, run_of = self._fetch_coalesced(shard, off, nb)
            else:
                data, blobs, starts, run_of = self._map(shard), None, None, None
            for i, (g, o, n) in enumerate(zip(g_present.tolist(), off.tolist(), nb.tolist())):
                if blobs is None:
                    view = data[o: o + n]  # inside the file: _index checked it
                else:
                    r = run_of[i]
                    view = memoryview(blobs[r])[o - starts[r]: o - starts[r] + n]
                if k == 1:
                    self._decode(view, flat[first[g]], shard, int(chunks[g]), n)
                else:
                    self._decode(view, scratch.reshape(-1), shard, int(chunks[g]), n)
                    if lay.delta:
                        _undelta_rows(scratch.reshape(1, -1), np.zeros(1, dtype=np.int64))
                    rows_here = np.flatnonzero(inverse == g)
                    out[rows_here] = scratch[idx[rows_here] - int(chunks[g]) * k]
        if k == 1:
            if lay.delta and present_all.any():
                _undelta_rows(flat, first[present_all].astype(np.int64))
            if len(chunks) < len(idx):  # repeated rows: copy the decoded one
                done = np.zeros(len(idx), dtype=bool)
                done[first] = True
                out[~done] = out[first[inverse[~done]]]
        return out

    def _decode(self, src: memoryview, dest: np.ndarray, shard: int, chunk: int, nbytes: int) -> None:
        lay = self.layout
        try:
            if len(src) != nbytes:
                raise ValueError(f"expected {nbytes} stored bytes, got {len(src)}")
            if lay.chunk_crc:
                if nbytes < 4:
                    raise ValueError(f"expected at least 4 stored bytes (its crc32c), got {nbytes}")
                # np.frombuffer: google_crc32c takes no memoryview of a mapped file, an array of it is free
                want = int.from_bytes(src[nbytes - 4:], "little")
                got = google_crc32c.value(np.frombuffer(src, np.uint8, nbytes - 4))
                if got != want:
                    raise ValueError(f"crc32c mismatch (stored {want:#010x}, computed {got:#010x}): "
                                     f"the chunk's bytes changed on disk")
                src, nbytes = src[: nbytes - 4], nbytes - 4
            if lay.blosc:
                # Blosc's header: nbytes (decoded) at byte 4, cbytes (stored) at byte 12.
                if nbytes < 16 or int.from_bytes(src[4:8], "little") != lay.chunk_nbytes or \
                        int.from_bytes(src[12:16], "little") != nbytes:
                    raise ValueError("Blosc header does not match the chunk's size")
                numcodecs.blosc.decompress(src, dest)
            else:
                if nbytes != lay.chunk_nbytes:
                    raise ValueError(f"expected {lay.chunk_nbytes} raw bytes, got {nbytes}")
                dest.view(np.uint8)[:] = np.frombuffer(src, dtype=np.uint8)
        except (RuntimeError, ValueError, TypeError) as exc:
            local = chunk - shard * lay.chunks_per_shard
            lo = chunk * lay.chunk_rows
            hi = min(lo + lay.chunk_rows, len(self)) - 1
            raise CorruptChunkError(
                f"{SIGNALS} chunk {local} of shard file {self._shard_path(shard)} (store rows {lo}..{hi}"
                f"{self._record_ids(lo, hi)}) failed to decode: {exc}") from None

    def _record_ids(self, lo: int, hi: int) -> str:
        """", records a, b" for an error message, when the store has record ids (best effort)."""
        try:
            ids = self.column("record_id")[lo: min(hi, lo + 3) + 1].tolist() if self.has_column("record_id") else []
        except Exception:  # the message must not fail on a second problem
            ids = []
        return f", records {', '.join(map(str, ids))}{', ...' if hi - lo >= 4 else ''}" if ids else ""

    def _zarr_group(self):
        if self._group is None:
            import zarr

            self._group = zarr.open_group(self.store, mode="r")
        return self._group

    def _read_zarr(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        arr = self._zarr_group()[SIGNALS]
        uniq, inverse = np.unique(idx, return_inverse=True)
        if uniq[-1] - uniq[0] + 1 == len(uniq):  # one run of rows: a slice is zarr's fastest path
            data = arr[int(uniq[0]): int(uniq[-1]) + 1]
        else:
            data = arr.get_orthogonal_selection((uniq,))
        if len(uniq) == len(idx) and np.array_equal(uniq, idx):
            out[...] = data
        else:
            np.take(data, inverse.reshape(-1), axis=0, out=out)
        return out

    # ---- metadata ----

    def column(self, name: str) -> np.ndarray:
        """A whole per-record array (lead_mask, valid_length, record_id, labels, ...), loaded once.

        String columns come back as object arrays of ``str``."""
        self._check_pid()
        col = self._columns.get(name)
        if col is None:
            if name == SIGNALS:
                raise BadArgumentError(f"column: {SIGNALS!r} is read with read()/read_signals(), not column()")
            group = self._zarr_group()
            if name not in group.array_keys():
                raise BadArgumentError(f"column: expected one of {sorted(group.array_keys())}, got {name!r}")
            col = group[name][...]
            if col.dtype.kind == "T":  # numpy's StringDType: object arrays of str work with more tools
                col = col.astype(object)
            self._columns[name] = col
        return col

    def patient_ids(self) -> np.ndarray:
        """object (N,) of ``str``: each row's patient id, "" where its source names none (the windows of
        one record share it). PTB-XL's ``patient_id`` as an integer string (``"15709"``); other sources
        a header comment's (``# Patient ID: ...``, zarr_store.sources) or "".

        Raises MissingColumnError (a StoreError) for a store converted before patient ids were kept."""
        if not self.has_column("patient_id"):
            raise MissingColumnError(f"store {self.store!r} predates patient_id (converted before patient ids "
                                     f"were kept): re-convert its sources into a new store to get them")
        return self.column("patient_id")

    def study_ids(self) -> np.ndarray:
        """object (N,) of ``str``: each row's study id, "" where its source has none (MIMIC-IV-ECG's
        ``study_id``, zarr_store.mimic; ``column("ecg_time")`` holds its acquisition time beside it).

        Raises MissingColumnError (a StoreError) for a store converted before study ids were kept."""
        if not self.has_column("study_id"):
            raise MissingColumnError(f"store {self.store!r} predates study_id (converted before study ids "
                                     f"were kept): re-convert its sources into a new store to get them")
        return self.column("study_id")

    def has_column(self, name: str) -> bool:
        """Whether the store holds a per-record array ``name``."""
        if name in self._columns:
            return True
        if name in self._absent:
            return False
        found = self._read_json(f"{name}/zarr.json") is not None
        if not found:
            self._absent.add(name)
        return found

    def read(self, indices, *, columns: tuple[str, ...] = (), out: np.ndarray | None = None) -> ReadBatch:
        """Signals, lead mask, valid lengths (and ``columns``) of ``indices``, in that order.

        A store without lead_mask / valid_length reads as all leads present / the full window.
        """
        idx = self._indices(indices)
        signals = self.read_signals(idx, out=out)
        if self.has_column("lead_mask"):
            lead_mask = self.column("lead_mask")[idx]
        else:
            lead_mask = np.ones((len(idx), self.shape[1]), dtype=bool)
        if self.has_column("valid_length"):
            valid = self.column("valid_length")[idx].astype(np.int32, copy=False)
        else:
            valid = np.full(len(idx), self.shape[-1], dtype=np.int32)
        meta = {name: self.column(name)[idx] for name in columns}
        return ReadBatch(signals=signals, lead_mask=lead_mask, valid_length=valid, index=idx, meta=meta)
