"""Parse a sharded Zarr v3 array's ``zarr.json`` into the facts the direct reader needs.

The direct reader handles the layout ``zarr_store.convert`` writes and nothing it cannot check:
a regular chunk grid whose inner chunks split only axis 0 (``(k, *rest)`` inside shards of
``(m * k, *rest)``), the ``sharding_indexed`` codec with its index at the end, the index codecs
``bytes`` (+ ``crc32c``), inner codecs ``[numcodecs.delta?] bytes(little) [blosc?] [crc32c?]`` (the
inner crc32c is checked on every read). Anything else
returns a reason string, and the reader falls back to zarr's own API.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

EMPTY = np.uint64(2**64 - 1)  # (offset, nbytes) of a chunk that was never written


@dataclass(frozen=True)
class ShardLayout:
    """One sharded array as the direct reader sees it.

    shape: the array's shape, e.g. (N, 12, T). chunk_rows: records per inner chunk (k);
    shard_rows: records per shard (m * k).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fill_value: object
    chunk_rows: int
    shard_rows: int
    key_prefix: str  # "c/" for the default chunk key encoding, "" for "v2"
    key_separator: str
    delta: bool  # numcodecs.delta filter (decode = int prefix sum over the flattened chunk)
    blosc: bool  # False: raw little-endian bytes
    index_crc: bool
    chunk_crc: bool  # each stored chunk ends with the crc32c of the bytes before it
    chunk_nbytes: int  # decoded bytes of one inner chunk
    chunks_per_shard: int

    @property
    def index_nbytes(self) -> int:
        return 16 * self.chunks_per_shard + (4 if self.index_crc else 0)

    @property
    def n_shards(self) -> int:
        return -(-self.shape[0] // self.shard_rows)

    def shard_key(self, shard: int) -> str:
        """The shard file's path relative to the array folder, e.g. ``c/3/0/0``."""
        coords = [str(shard)] + ["0"] * (len(self.shape) - 1)
        return self.key_prefix + self.key_separator.join(coords)


def parse_shard_layout(name: str, meta: dict) -> tuple[ShardLayout | None, str]:
    """``zarr.json`` of an array -> (layout, "") or (None, why the direct reader cannot read it)."""
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        return None, "not a Zarr v3 array"
    shape = tuple(int(s) for s in meta["shape"])
    try:
        dtype = np.dtype(meta["data_type"])
    except TypeError:
        return None, f"data type {meta['data_type']!r}"
    if dtype.kind not in "iub" or len(shape) < 1:
        return None, f"data type {meta['data_type']!r}"
    grid = meta.get("chunk_grid", {})
    if grid.get("name") != "regular":
        return None, f"chunk grid {grid.get('name')!r}"
    shard_shape = tuple(grid["configuration"]["chunk_shape"])
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None, "not sharded"
    if meta.get("storage_transformers"):
        return None, "storage transformers"
    cfg = codecs[0]["configuration"]
    if cfg.get("index_location", "end") != "end":
        return None, f"shard index at the {cfg['index_location']}"
    chunk_shape = tuple(cfg["chunk_shape"])
    if chunk_shape[1:] != shape[1:] or shard_shape[1:] != shape[1:] or shard_shape[0] % chunk_shape[0]:
        return None, f"chunks {chunk_shape} in shards {shard_shape} do not split only axis 0 of {shape}"
    index_names = [c.get("name") for c in cfg.get("index_codecs", [])]
    if index_names not in (["bytes"], ["bytes", "crc32c"]) or \
            cfg["index_codecs"][0].get("configuration", {}).get("endian", "little") != "little":
        return None, f"index codecs {index_names}"
    delta, blosc, seen_bytes, crc = False, False, False, False
    for codec in cfg.get("codecs", []):
        cname, ccfg = codec.get("name"), codec.get("configuration", {}) or {}
        if cname == "numcodecs.delta" and not seen_bytes and not delta:
            if np.dtype(ccfg.get("dtype", dtype)) != dtype or np.dtype(ccfg.get("astype", dtype)) != dtype:
                return None, f"delta filter {ccfg}"
            delta = True
        elif cname == "bytes" and not seen_bytes:
            endian = ccfg.get("endian", "little")
            if dtype.itemsize > 1 and endian != sys.byteorder:
                return None, f"{endian}-endian chunks"
            seen_bytes = True
        elif cname == "blosc" and seen_bytes and not blosc and not crc:
            blosc = True
        elif cname == "crc32c" and seen_bytes and not crc:
            crc = True
        else:
            return None, f"inner codec {cname!r}"
    if not seen_bytes:
        return None, "no bytes codec"
    key = meta.get("chunk_key_encoding", {"name": "default"})
    sep = key.get("configuration", {}).get("separator", "/" if key.get("name") == "default" else ".")
    if key.get("name") == "default":
        prefix = "c" + sep
    elif key.get("name") == "v2":
        prefix = ""
    else:
        return None, f"chunk key encoding {key.get('name')!r}"
    fill = meta.get("fill_value", 0)
    if dtype.kind == "b":
        fill = bool(fill)
    layout = ShardLayout(name=name, shape=shape, dtype=dtype, fill_value=fill, chunk_rows=chunk_shape[0],
                         shard_rows=shard_shape[0], key_prefix=prefix, key_separator=sep, delta=delta,
                         blosc=blosc, index_crc=len(index_names) == 2, chunk_crc=crc,
                         chunk_nbytes=chunk_shape[0] * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize,
                         chunks_per_shard=shard_shape[0] // chunk_shape[0])
    return layout, ""
