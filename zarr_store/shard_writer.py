"""Direct writing of Zarr v3 shard files, and the small key/value I/O the converter needs.

A shard file (zarr's ``sharding_indexed`` codec, index at the end) is the encoded inner chunks one after
the other, then an index of ``(offset, nbytes)`` little-endian uint64 pairs per inner chunk in C order
(``(2**64-1, 2**64-1)`` = empty chunk), then the crc32c of the index as 4 little-endian bytes. Writing it
ourselves skips zarr's per-chunk overhead (~15% of conversion time, shared/notes/zarr-store.md); plain
``zarr.open_array`` reads the result bit for bit (tested).
"""

from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numcodecs
import numcodecs.blosc
import numpy as np

from zarr_store.paths import is_url, local_path

EMPTY = np.uint64(2**64 - 1)
CODECS = ("zstd", "lz4", "delta")


@dataclass(frozen=True)
class ChunkCodec:
    """The inner-chunk pipeline of ``signals``: optional delta filter, then Blosc with bit-shuffle.

    ``blocksize`` (bytes) is the chunk's own size, so Blosc compresses each chunk as one block: on
    PTB-XL rows (120,000 bytes) that encodes 1.4x and decodes 1.4x faster than Blosc's automatic
    block size (~3,850 vs ~2,700 encodes/s, ~8,700 vs ~6,200 decodes/s per core, numcodecs' Blosc),
    with a slightly better ratio (2.60 vs 2.58), and it lets ChunkEncoder write the block itself.
    Decoding is self-describing, so any reader benefits.

    ``crc32c``: a Zarr v3 ``crc32c`` codec after Blosc (4 bytes per chunk, ~4 µs to compute): the
    shard index has its own checksum, but without one per chunk a flipped byte inside a chunk
    decodes to a plausible ECG, millivolts off, with no error. Stores written before it have none
    (``crc32c=False`` describes them)."""

    name: str = "zstd"
    blocksize: int = 0
    crc32c: bool = True

    def __post_init__(self):
        if self.name not in CODECS:
            raise ValueError(f"codec: expected one of {CODECS}, got {self.name!r}")

    @property
    def cname(self) -> str:
        return "lz4" if self.name == "lz4" else "zstd"

    def blosc(self) -> numcodecs.Blosc:
        return numcodecs.Blosc(cname=self.cname, clevel=1, shuffle=numcodecs.Blosc.BITSHUFFLE,
                               blocksize=self.blocksize)

    def zarr_codecs(self) -> tuple[list, list]:
        """(filters, compressors) for ``zarr.create_array`` describing the same pipeline."""
        from zarr.codecs import BloscCodec, Crc32cCodec

        filters = []
        if self.name == "delta":
            from zarr.codecs.numcodecs import Delta

            filters = [Delta(dtype="<i2")]
        blosc = BloscCodec(cname=self.cname, clevel=1, shuffle="bitshuffle", typesize=2, blocksize=self.blocksize)
        return filters, [blosc, Crc32cCodec()] if self.crc32c else [blosc]


def bit_shuffle(chunk: np.ndarray) -> np.ndarray:
    """Blosc 1's bit-shuffle of an int16 chunk (C-contiguous, elements a multiple of 8) as one block,
    as uint8 bytes: 16 rows of ``n / 8`` bytes, row ``r`` bit ``r`` of every element (bits 0-7 from the
    low byte), element ``i`` at bit ``i % 8`` of byte ``i // 8``.

    The ``bitshuffle`` package's transpose (the kernel Blosc bundles): ~22 µs for a 12 x 5000 row and
    ~1 ms to import, where our former Numba kernel (~29 µs) cost each process 0.5-0.7 s to load (numba's
    import, its registries and the scipy.linalg they import), most of a short parallel conversion's
    set-up. The encoder's probe checks its bytes against numcodecs' Blosc in every process.
    Its transpose, not its ``bitshuffle()``: that one runs blocks in an OpenMP team, whose threads
    spin beside the encoder (4.7 s of CPU in a 2.6 s conversion) and hang workers forked after it.
    Unlike the Numba kernel it holds the GIL (~22 of a row's ~190 µs of encoding): threads of one
    process encode a little less in parallel; processes (our workers, Dask's) are not affected."""
    from bitshuffle.ext import trans_bit_elem

    return trans_bit_elem(chunk.reshape(-1)).view(np.uint8)


class ChunkEncoder:
    """Encodes one int16 chunk (C-contiguous) to the bytes the zarr pipeline above decodes.

    ``path`` says how, chosen once here: ``"zstandard"`` bit-shuffles with ``bit_shuffle`` and
    compresses with the ``zstandard`` package's zstd (level 1), then writes Blosc's 24-byte header
    around the frame; ``"blosc"`` calls numcodecs' Blosc. Why: numcodecs 0.16's bundled Blosc spends
    ~250 µs on a 12 x 5000 PTB-XL row, zstandard's zstd 1.5.7 ~165 µs, and encoding is most of a
    conversion's time. The result is a standard Blosc chunk (zstd, bit-shuffle, one block): on 200
    PTB-XL rows it was byte for byte what numcodecs writes; only the speed differs.

    The fast path needs the chunk to be Blosc's single block (``blocksize`` = the chunk's bytes,
    elements a multiple of 8), and is taken only if a probe chunk it encodes here carries numcodecs'
    header and decodes back through numcodecs exactly. Chunks zstd cannot shrink well are handed to
    numcodecs, which stores them raw where Blosc would."""

    def __init__(self, codec: ChunkCodec):
        self._args = (codec.cname.encode(), 1, numcodecs.Blosc.BITSHUFFLE, codec.blocksize)
        self._delta = numcodecs.Delta(dtype="<i2") if codec.name == "delta" else None
        self._crc = codec.crc32c
        self.path = "blosc"
        self._nbytes = codec.blocksize
        if codec.cname == "zstd" and codec.blocksize > 0 and codec.blocksize % 16 == 0:
            self._try_zstandard()

    def _try_zstandard(self) -> None:
        try:
            import zstandard
            from bitshuffle.ext import trans_bit_elem  # noqa: F401 - bit_shuffle's
        except ImportError:  # optional speed-ups; the numcodecs path is complete
            return
        self._zstd = zstandard.ZstdCompressor(level=1)
        self._shuffle = bit_shuffle
        # A smooth signal with noise: compresses like an ECG, so the probe takes the compressed branch.
        n = self._nbytes // 2
        rng = np.random.default_rng(0)
        probe = (1000 * np.sin(np.arange(n) / 40) + rng.normal(0, 20, n)).astype(np.int16)
        want = numcodecs.blosc.compress(probe, *self._args)
        if want[2] & 0x02:  # Blosc stores chunks this small raw (under 128 bytes): keep its path
            return
        self._head = want[:4]
        got = self._encode_zstandard(probe)
        try:
            ok = got is not None and got[:12] == want[:12] and numcodecs.blosc.decompress(got) == probe.tobytes()
        except RuntimeError:  # numcodecs raises on a chunk Blosc cannot decode
            ok = False
        if ok:
            self.path = "zstandard"

    def _encode_zstandard(self, chunk: np.ndarray) -> bytes | None:
        """The Blosc chunk, or None where Blosc might not compress it. Blosc gives zstd nbytes - 8 bytes
        (the chunk's size + 16 overhead - 24 header bytes) and stores the chunk raw when zstd fails; in
        so tight a buffer zstd can fail on a frame that would just fit (it writes with a margin), so
        frames near the limit go to numcodecs, which decides as Blosc does."""
        frame = self._zstd.compress(self._shuffle(chunk))
        n = len(frame)
        if n > self._nbytes - 8 - (64 + self._nbytes // 64):
            return None
        # Header: versions, flags, typesize (as Blosc wrote them), nbytes, blocksize, cbytes; then the
        # one block's start (20) and the size of its one stream.
        return self._head + struct.pack("<5i", self._nbytes, self._nbytes, 24 + n, 20, n) + frame

    def encode(self, chunk: np.ndarray) -> bytes:
        """The stored chunk of ``chunk`` (Blosc, then its crc32c when the codec has one): int16 and
        C-contiguous by contract, so numcodecs' argument checks (~2 µs a chunk) are skipped."""
        assert chunk.dtype == np.int16 and chunk.flags.c_contiguous
        if self._delta is not None:
            chunk = self._delta.encode(chunk)
        out = None
        if self.path == "zstandard" and chunk.nbytes == self._nbytes:
            out = self._encode_zstandard(chunk)
        if out is None:
            out = numcodecs.blosc.compress(chunk, *self._args)
        return out + google_crc32c.value(out).to_bytes(4, "little") if self._crc else out


def build_shard(chunks: list[bytes | None], n_per_shard: int) -> list[bytes]:
    """The parts of a shard file (concatenated, they are the file) from up to ``n_per_shard`` encoded
    chunks (None = empty chunk). Parts, not one bytes object: joining 20+ MB costs a copy."""
    index = np.full((n_per_shard, 2), EMPTY, dtype="<u8")
    offset = 0
    for i, c in enumerate(chunks):
        if c is not None:
            index[i] = (offset, len(c))
            offset += len(c)
    index_bytes = index.tobytes()
    crc = np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes()
    return [c for c in chunks if c is not None] + [index_bytes, crc]


class ShardFile:
    """One shard file written chunk by chunk, in slot order: byte for byte what build_shard makes of
    the same chunks, without holding them. Each encoded chunk is freed once written; holding a
    shard's (23 MB for PTB-XL) cost ~10 page faults and 15-25 µs per record."""

    def __init__(self, io: StoreIO, key: str, n_per_shard: int):
        self.n = n_per_shard
        self._slots: list[int] = []  # filled slots, increasing, and their sizes
        self._sizes: list[int] = []
        self._out = io.open_write(key)

    def put(self, slot: int, data: bytes) -> None:
        if self._slots and slot <= self._slots[-1]:
            raise ValueError(f"slot: expected more than {self._slots[-1]} (chunks go in slot order), got {slot}")
        self._slots.append(slot)
        self._sizes.append(len(data))
        self._out.write(data)

    @property
    def index(self) -> np.ndarray:
        """(n_per_shard, 2) little-endian uint64 (offset, nbytes), EMPTY for empty slots."""
        index = np.full((self.n, 2), EMPTY, dtype="<u8")
        sizes = np.asarray(self._sizes, dtype="<u8")
        index[self._slots, 0] = np.cumsum(sizes) - sizes
        index[self._slots, 1] = sizes
        return index

    def commit(self) -> None:
        """Append the index and its checksum; the file then appears whole at its key (or, on an
        error, not at all: the temporary file is removed)."""
        try:
            index_bytes = self.index.tobytes()
            self._out.write(index_bytes)
            self._out.write(np.uint32(google_crc32c.value(index_bytes)).astype("<u4").tobytes())
        except BaseException:
            self._out.abort()
            raise
        self._out.commit()

    def abort(self) -> None:
        self._out.abort()


def split_shard(data: bytes, n_per_shard: int) -> list[bytes | None]:
    """Inverse of build_shard: the encoded chunks of a shard file (None where empty)."""
    size = n_per_shard * 16 + 4
    if len(data) < size:
        raise ValueError(f"shard file: expected at least {size} bytes, got {len(data)}")
    index_bytes = data[-size:-4]
    if google_crc32c.value(index_bytes) != int(np.frombuffer(data[-4:], dtype="<u4")[0]):
        raise ValueError("shard file: index checksum mismatch")
    index = np.frombuffer(index_bytes, dtype="<u8").reshape(n_per_shard, 2)
    return [None if o == EMPTY else data[int(o) : int(o) + int(n)] for o, n in index]


class StoreIO:
    """Byte-level access to a store: a local folder (atomic writes through rename) or an fsspec URL
    (whose single-object puts are atomic on object stores)."""

    def __init__(self, url: str):
        self.url = url
        self.local = not is_url(url)
        if self.local:
            self.root = Path(local_path(url))
            self.fs = None
        else:
            import fsspec

            self.fs, self.root = fsspec.core.url_to_fs(url)

    def _path(self, key: str):
        return self.root / key if self.local else f"{self.root.rstrip('/')}/{key}"

    def write(self, key: str, data: bytes | list[bytes]) -> None:
        """Write ``data`` (bytes, or parts to concatenate) at ``key`` atomically."""
        parts = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        out = self.open_write(key)
        try:
            for part in parts:
                out.write(part)
        except BaseException:
            out.abort()
            raise
        out.commit()

    def remove_temps(self) -> int:
        """Remove the temporary files (``.tmp-*``) that killed writers left in a local store; returns
        how many. Object stores have none: their writes are single puts."""
        if not self.local:
            return 0
        n = 0
        for folder, _, names in os.walk(self.root):
            for name in names:
                if name.startswith(".tmp-"):
                    Path(folder, name).unlink(missing_ok=True)
                    n += 1
        return n

    def open_write(self, key: str) -> AtomicWrite:
        """A file at ``key`` written piece by piece: it appears whole at commit, never in part."""
        return AtomicWrite(self, key)

    def read(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            if self.local:
                return path.read_bytes()
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).exists() if self.local else self.fs.exists(self._path(key))

    def listdir(self, key: str) -> list[str]:
        path = self._path(key)
        if self.local:
            return sorted(p.name for p in path.iterdir()) if path.is_dir() else []
        try:
            return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(path, detail=False))
        except FileNotFoundError:
            return []

    def remove_tree(self, key: str) -> None:
        path = self._path(key)
        if self.local:
            import shutil

            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        elif self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def size(self, key: str = "") -> int:
        """Bytes under ``key`` (the whole store by default)."""
        path = self._path(key) if key else self.root
        if self.local:
            if path.is_file():
                return path.stat().st_size
            return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        try:
            return int(self.fs.du(path))
        except FileNotFoundError:
            return 0


class AtomicWrite:
    """Local: pieces go to a temporary file beside the target, renamed onto it by commit. fsspec:
    pieces are collected and put as one object (single-object puts are atomic on object stores)."""

    def __init__(self, io: StoreIO, key: str):
        self._io, self._path = io, io._path(key)
        if not io.local:
            self._parts: list = []
            return
        path = self._path
        self._tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            self._fd = os.open(self._tmp, flags, 0o644)
        except FileNotFoundError:  # a new folder: made only then (mkdir costs ~60 µs even when it exists)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._tmp, flags, 0o644)

    def write(self, data) -> None:
        """Write all of ``data`` (unbuffered: one copy, into the page cache)."""
        if not self._io.local:
            self._parts.append(bytes(data))
            return
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def commit(self) -> None:
        if not self._io.local:
            self._io.fs.pipe_file(self._path, b"".join(self._parts))
            return
        try:
            os.close(self._fd)
            self._fd = None
            os.replace(self._tmp, self._path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if self._io.local:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._tmp.unlink(missing_ok=True)


def meta_array_files(template: dict, values: np.ndarray, json_indent) -> list[tuple[str, list[bytes]]] | None:
    """The files of a new sharded metadata array holding ``values`` (rows along axis 0), byte for byte
    what ``zarr.create_array`` with ``template`` (zarr's own ``zarr.json`` of the array, any shape)
    and then ``arr[:] = values`` write: ``(key relative to the array, parts)``, shards first and
    ``zarr.json`` last. None when the template uses a pipeline this does not reproduce (then zarr
    writes the array). Why: zarr's per-array overhead was ~2.5 ms of a conversion's fixed cost for
    each of the ten metadata arrays, more than their encoding."""
    import json

    pipeline = _meta_pipeline(template, values)
    if pipeline is None:
        return None
    inner, outer, string, zstd = pipeline
    fill = template["fill_value"]
    if string:
        vlen = numcodecs.VLenUTF8()
        values = np.asarray(values, dtype=object)

        def is_fill(c):
            return bool((c == fill).all())

        def encode(c):
            return zstd.encode(vlen.encode(c))
    else:
        values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
        if values.dtype.kind == "f" and isinstance(fill, str):  # "NaN", "Infinity", "-Infinity"
            fill = float(fill.replace("Infinity", "inf"))
        fill_arr = np.asarray(fill, values.dtype)
        bits = f"u{values.dtype.itemsize}"

        def is_fill(c):
            if c.dtype.kind == "f" and fill == 0.0:  # zarr compares zero by bit pattern: -0.0 is data
                return bool((c.view(bits) == fill_arr.view(bits)).all())
            return bool(np.array_equal(c, np.broadcast_to(fill_arr, c.shape), equal_nan=c.dtype.kind == "f"))

        def encode(c):
            return zstd.encode(c.tobytes())
    n, rows, per_shard = len(values), inner[0], outer[0] // inner[0]
    files = []
    for s0 in range(0, n, outer[0]):
        chunks: list[bytes | None] = [None] * per_shard
        for i in range(min(per_shard, -(-(n - s0) // rows))):
            part = values[s0 + i * rows : s0 + (i + 1) * rows]
            if len(part) < rows:  # the last chunk: padded with the fill value, as zarr does
                full = np.empty((rows, *values.shape[1:]), dtype=values.dtype)
                full[...] = fill
                full[: len(part)] = part
                part = full
            if not is_fill(part):
                chunks[i] = encode(part)
        if any(c is not None for c in chunks):
            key = "c/" + "/".join([str(s0 // outer[0])] + ["0"] * (values.ndim - 1))
            files.append((key, build_shard(chunks, per_shard)))
    meta = dict(template, shape=list(values.shape))
    files.append(("zarr.json", [json.dumps(meta, allow_nan=True, indent=json_indent).encode()]))
    return files


def _meta_pipeline(template: dict, values: np.ndarray):
    """(inner chunk shape, shard shape, strings?, the Zstd codec) when ``template`` is a sharded
    array of [bytes little-endian | vlen-utf8, zstd] chunks, index [bytes, crc32c] at the end, default
    keys, shaped like ``values``; None otherwise."""
    try:
        (shard,) = template["codecs"]
        cfg = shard["configuration"]
        inner = list(cfg["chunk_shape"])
        outer = list(template["chunk_grid"]["configuration"]["chunk_shape"])
        serializer, compressor = cfg["codecs"]
        index = cfg["index_codecs"]
        little = [c.get("configuration", {}).get("endian", "little") == "little" for c in (serializer, index[0])]
        string = serializer["name"] == "vlen-utf8"
        ok = (shard["name"] == "sharding_indexed" and cfg.get("index_location", "end") == "end"
              and [c["name"] for c in index] == ["bytes", "crc32c"] and all(little)
              and (string or serializer["name"] == "bytes") and compressor["name"] == "zstd"
              and template["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
              and not template.get("storage_transformers") and len(template["shape"]) == values.ndim
              and inner[1:] == outer[1:] == list(values.shape[1:]) and outer[0] % inner[0] == 0)
        conf = compressor["configuration"]
        zstd = numcodecs.Zstd(level=conf["level"], checksum=conf["checksum"])
        return (inner, outer, string, zstd) if ok else None
    except (KeyError, TypeError, ValueError):
        return None
