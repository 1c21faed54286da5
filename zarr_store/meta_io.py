"""The store's zarr.json files and metadata arrays, written without zarr's per-node machinery.

zarr.json files are the ones zarr 3 writes for a new node (``template``, spelled out: no import of
zarr) with their shape and attributes set, serialized as zarr serializes them: the files are those
zarr writes (tested), for ~6 ms less per conversion. A first conversion writes the metadata arrays'
files directly (shard_writer.meta_array_files, the bytes zarr writes); an append resizes them
through zarr, on zarr's event loop, concurrently.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math

import numpy as np

from zarr_store.shard_writer import ChunkCodec, StoreIO, meta_array_files

# 1-D metadata arrays: name -> (dtype, fill value)
META_ARRAYS = {
    "valid_length": ("int32", 0), "window_index": ("int32", 0), "record_id": (str, ""),
    "source": (str, ""), "orig_rate": ("float32", 0.0), "age": ("float32", math.nan),
    "sex": ("int8", -1), "labels": (str, ""), "strat_fold": ("int8", 0), "patient_id": (str, ""),
    "study_id": (str, ""), "ecg_time": (str, ""),
}
# Arrays later versions added: an append to a store without one keeps it without (see write_metadata).
LATER_ARRAYS = ("patient_id", "study_id", "ecg_time")
# Per-record string arrays a source may give (``extra`` of write_metadata; MIMIC-IV-ECG's study id and
# acquisition time, zarr_store.mimic), "" otherwise.
EXTRA_ARRAYS = ("study_id", "ecg_time")
# Metadata arrays: small chunks (an append re-encodes only its tail; zarr pads the last chunk, and
# padding 65,536 strings cost ~10 ms per array) inside large shards (few files per million rows).
META_CHUNK, META_SHARD = 4096, 262144


def write_json(io: StoreIO, key: str, obj) -> None:
    io.write(key, json.dumps(obj, sort_keys=True).encode())


def read_json(io: StoreIO, key: str):
    """The JSON object at ``key``, None when there is no such file (ValueError when it is not JSON)."""
    data = io.read(key)
    return None if data is None else json.loads(data)


# zarr's default ``json_indent``: its zarr.json files are written with it (tested equal to zarr's).
JSON_INDENT = 2
_BYTES_LE = {"name": "bytes", "configuration": {"endian": "little"}}
_META_ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}


@functools.lru_cache(maxsize=None)
def template(kind: str, *key) -> dict:
    """The zarr.json zarr 3 writes for a new node (read-only; callers copy it): "group", "signals"
    (codec, window, shard_size) or a metadata array's name, with shape 0 along rows and no attributes.
    Spelled out here, key order included, rather than made by zarr in memory: importing zarr to make
    them cost 0.1-0.15 s, the largest set-up step of a conversion left after discovery; a test
    compares each with the one zarr makes, so a zarr that writes them otherwise is caught. They are
    zarr's defaults (JSON_INDENT, the metadata arrays' zstd): a zarr.config changing those is not
    followed here, though an append that zarr writes follows it; either store reads the same."""
    if kind == "group":
        return {"attributes": {}, "zarr_format": 3, "node_type": "group"}
    if kind == "signals":
        codec, window, shard_size = key
        chunk = ChunkCodec(codec, blocksize=12 * window * 2)
        blosc = {"name": "blosc", "configuration": {"typesize": 2, "cname": chunk.cname, "clevel": 1,
                                                      "shuffle": "bitshuffle", "blocksize": chunk.blocksize}}
        delta = [{"name": "numcodecs.delta", "configuration": {"dtype": "<i2"}}] if codec == "delta" else []
        return _array_json([0, 12, window], "int16", 0, [shard_size, 12, window], [1, 12, window],
                           [*delta, _BYTES_LE, blosc, {"name": "crc32c"}], ["row", "lead", "time"])
    if kind == "lead_mask":
        return _array_json([0, 12], "bool", False, [META_SHARD, 12], [META_CHUNK, 12],
                           [{"name": "bytes"}, _META_ZSTD], ["row", "lead"])
    dtype, fill = META_ARRAYS[kind]
    if dtype is str:
        dtype, inner = "string", {"name": "vlen-utf8", "configuration": {}}
    else:
        inner = _BYTES_LE if np.dtype(dtype).itemsize > 1 else {"name": "bytes"}
    if isinstance(fill, float) and math.isnan(fill):
        fill = "NaN"
    return _array_json([0], dtype, fill, [META_SHARD], [META_CHUNK], [inner, _META_ZSTD], ["row"])


def _array_json(shape, dtype, fill, shard, chunk, codecs, dims) -> dict:
    """zarr 3's zarr.json of a sharded array (index at the end, with its crc32c)."""
    sharding = {"chunk_shape": chunk, "codecs": codecs, "index_codecs": [_BYTES_LE, {"name": "crc32c"}],
                "index_location": "end"}
    return {"shape": shape, "data_type": dtype,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": shard}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": fill, "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
            "attributes": {}, "dimension_names": dims, "zarr_format": 3, "node_type": "array",
            "storage_transformers": []}


def write_node(io: StoreIO, path: str, node: dict, **changes) -> None:
    """Write ``path``/zarr.json: ``node`` (a template) with ``changes``, serialized as zarr does."""
    meta = dict(node, **changes)
    key = f"{path}/zarr.json" if path else "zarr.json"
    io.write(key, json.dumps(meta, allow_nan=True, indent=JSON_INDENT).encode())


def direct_files(name: str, values: np.ndarray):
    return meta_array_files(template(name), values, JSON_INDENT)


def meta_spec(name: str, rows: int) -> dict:
    """zarr.create_array arguments of metadata array ``name`` holding ``rows`` rows."""
    if name == "lead_mask":
        return dict(shape=(rows, 12), dtype="bool", chunks=(META_CHUNK, 12), shards=(META_SHARD, 12),
                    fill_value=False, dimension_names=("row", "lead"))
    dtype, fill = META_ARRAYS[name]
    return dict(shape=(rows,), dtype=dtype, chunks=(META_CHUNK,), shards=(META_SHARD,), fill_value=fill,
                dimension_names=("row",))


def write_metadata(io: StoreIO, plan: list, first_rows: np.ndarray, sources: list[str],
                   record_ids: list[str], window: int, extra: dict | None = None, grow_signals: bool = True) -> None:
    """Rows [first_rows[0], first_rows[-1]) of every metadata array, for the PlannedRecords ``plan``
    (record k starts at row first_rows[k]; its source name and record id are sources[k],
    record_ids[k]; ``extra[name][k]`` its value of an EXTRA_ARRAYS array, "" when absent); then
    ``signals`` grows to the new row count (last: it is the store's row count), unless not
    ``grow_signals`` (metadata written while the last shards are: the caller grows it after them)."""
    start, end = int(first_rows[0]), int(first_rows[-1])
    counts = np.array([p.n_windows for p in plan], dtype=np.int64)
    rec_of_row = np.repeat(np.arange(len(plan)), counts)
    window_index = np.arange(end - start) - np.repeat(first_rows[:-1] - start, counts)
    n_out = np.array([p.n_out for p in plan], dtype=np.int64)[rec_of_row]
    cols = {
        "valid_length": np.minimum(window, n_out - window_index * window).astype(np.int32),
        "window_index": window_index.astype(np.int32),
        "record_id": np.array(record_ids, dtype=object)[rec_of_row],
        "source": np.array(sources, dtype=object)[rec_of_row],
        "orig_rate": np.array([p.fs for p in plan], dtype=np.float32)[rec_of_row],
        "age": np.array([p.age for p in plan], dtype=np.float32)[rec_of_row],
        "sex": np.array([p.sex for p in plan], dtype=np.int8)[rec_of_row],
        "labels": np.array([p.labels for p in plan], dtype=object)[rec_of_row],
        "strat_fold": np.array([p.strat_fold for p in plan], dtype=np.int8)[rec_of_row],
        "patient_id": np.array([p.patient_id for p in plan], dtype=object)[rec_of_row],
    }
    for name in EXTRA_ARRAYS:
        values = (extra or {}).get(name) or [""] * len(plan)
        cols[name] = np.array(values, dtype=object)[rec_of_row]
    cols["lead_mask"] = np.array([[i >= 0 for i in p.lead_idx] for p in plan], dtype=bool).reshape(-1, 12)[rec_of_row]
    cols = {k: v.astype(str) if v.dtype == object else v for k, v in cols.items()}
    # A first conversion's metadata arrays are created with their final shape: their files written
    # directly (shard_writer.meta_array_files, the bytes zarr writes), zarr.json last. An existing
    # one of an append is resized through zarr. Both idempotent.
    exists = {name: io.exists(f"{name}/zarr.json") for name in cols}
    for name in LATER_ARRAYS:
        if start > 0 and not exists[name]:
            # Appending to a store converted before patient ids (study ids, times) were kept: its earlier
            # rows' ids are unknown, and a column mixing known ids with unknown ones would pass for a
            # complete one (a patient-disjoint split would silently mix patients). The store stays
            # without the column, and StoreReader.patient_ids / study_ids say to re-convert.
            del cols[name], exists[name]
    if start == 0:
        for name, values in list(cols.items()):
            if exists[name]:
                # Left by this conversion's own earlier write (a store of no rows has no other
                # metadata): one of a run killed after it, or the one written while the last shards
                # were (convert), for rows a wrong prediction then changed. Written afresh: resized
                # through zarr, a shorter array would keep the dropped rows' bytes in its chunk.
                io.remove_tree(name)
                exists[name] = False
            files = direct_files(name, values)
            if files is not None:
                for key, parts in files:
                    io.write(f"{name}/{key}", parts)
                del cols[name]
    if cols:  # appending (or zarr refused the direct path): zarr writes these
        _write_with_zarr(io.url, cols, exists, start, end)
    # Last: a store's row count is the shape of signals.
    if grow_signals:
        grow(io, "signals", (end, 12, window))


def _write_with_zarr(url: str, cols: dict, exists: dict, start: int, end: int) -> None:
    """Rows [start, end) of metadata arrays through zarr: existing ones resized, missing ones made."""
    import zarr

    group = zarr.open_group(url, mode="r+")
    async_group = getattr(group, "_async_group", None)

    async def one(name, values):
        shape = (end, *values.shape[1:])
        if exists[name]:
            arr = await async_group.getitem(name)
            await arr.resize(shape)
        else:
            arr = await async_group.create_array(name, **meta_spec(name, end))
        if end > start:
            await arr.setitem(slice(start, end), values)

    def one_sync(name, values):
        if exists[name]:
            arr = group[name]
            arr.resize((end, *values.shape[1:]))
        else:
            arr = group.create_array(name, **meta_spec(name, end))
        if end > start:
            arr[start:end] = values

    _on_zarr_loop([lambda name=name, v=v: one(name, v) for name, v in cols.items()]
                  if async_group is not None else None,
                  [lambda name=name, v=v: one_sync(name, v) for name, v in cols.items()])


def grow(io: StoreIO, name: str, shape: tuple[int, ...]) -> None:
    """Set the shape of array ``name`` to ``shape`` (not smaller than its shape) in its zarr.json, as
    zarr's resize does when an array grows (it only rewrites zarr.json then), without its ~2 ms."""
    meta = json.loads(io.read(f"{name}/zarr.json"))
    if len(shape) != len(meta["shape"]) or any(a < b for a, b in zip(shape, meta["shape"])):
        raise ValueError(f"shape: expected at least {meta['shape']} for {name}, got {list(shape)}")
    write_node(io, name, meta, shape=list(shape))


def _on_zarr_loop(coroutines, fallbacks) -> None:
    """Run zarr operations concurrently on zarr's own event loop (about half the time of one after
    the other: each waits on a file write); the sequential public API if zarr moved its helpers
    (``coroutines`` None)."""
    try:
        from zarr.core.sync import sync
        if coroutines is None:
            raise ImportError("zarr's async internals moved")
    except ImportError:
        for f in fallbacks:
            f()
        return

    async def gather():
        await asyncio.gather(*[make() for make in coroutines])

    sync(gather())
