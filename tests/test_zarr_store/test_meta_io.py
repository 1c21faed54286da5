"""zarr_store.meta_io: the zarr.json and metadata files a conversion writes itself are byte for byte
those zarr writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr


@pytest.mark.parametrize("rows", [0, 3, 4096, 5000])
def test_direct_metadata_files_equal_zarrs(tmp_path, rows):
    """The metadata arrays a first conversion writes itself are the files zarr writes, byte for byte:
    chunks across a boundary, a padded last chunk, all-fill chunks left out (NaN, 0, -0.0, "")."""
    from zarr_store.meta_io import META_ARRAYS, direct_files as _direct_files, meta_spec as _meta_spec

    rng = np.random.default_rng(rows)
    cols = {
        "valid_length": rng.integers(0, 5000, rows).astype(np.int32),
        "window_index": np.zeros(rows, np.int32),  # all fill: no shard file
        "record_id": np.array([f"rec/{i}" for i in range(rows)]),
        "source": np.array(["ptbxl-\u00b5V"] * rows),
        "orig_rate": np.where(rng.random(rows) < 0.5, -0.0, 500.0).astype(np.float32),
        "age": np.where(np.arange(rows) < 4096, np.nan, 61.0).astype(np.float32),  # first chunk all NaN
        "sex": rng.integers(-1, 2, rows).astype(np.int8),
        "labels": np.array([""] * rows),
        "strat_fold": rng.integers(0, 11, rows).astype(np.int8),
        "patient_id": np.array([str(i % 7) if i % 3 else "" for i in range(rows)]),
        "study_id": np.array([str(40689238 + i) if i % 5 else "" for i in range(rows)]),
        "ecg_time": np.array(["2180-07-23 08:44:00" if i % 2 else "" for i in range(rows)]),
        "lead_mask": rng.random((rows, 12)) < 0.9,
    }
    assert set(cols) == set(META_ARRAYS) | {"lead_mask"}
    for name, values in cols.items():
        ref = zarr.create_array(str(tmp_path / "ref"), name=name, **_meta_spec(name, rows))
        if rows:
            ref[:] = values
        files = _direct_files(name, values)
        assert files is not None, name
        ours = {key: b"".join(parts) for key, parts in files}
        theirs = {p.relative_to(tmp_path / "ref" / name).as_posix(): p.read_bytes()
                  for p in (tmp_path / "ref" / name).rglob("*") if p.is_file()}
        assert ours == theirs, name


def _zarr_template(kind: str, *key) -> dict:
    """The zarr.json zarr itself writes for a new node of ``kind`` (what meta_io.template spells out)."""
    import warnings

    from zarr.storage import MemoryStore

    from zarr_store.meta_io import meta_spec
    from zarr_store.shard_writer import ChunkCodec

    files: dict = {}
    if kind == "group":
        zarr.open_group(MemoryStore(files), mode="w")
        return json.loads(files["zarr.json"].to_bytes())
    if kind == "signals":
        codec, window, shard_size = key
        filters, compressors = ChunkCodec(codec, blocksize=12 * window * 2).zarr_codecs()
        spec = dict(shape=(0, 12, window), dtype="int16", chunks=(1, 12, window), shards=(shard_size, 12, window),
                    filters=filters, compressors=compressors, fill_value=0, dimension_names=("row", "lead", "time"))
    else:
        spec = meta_spec(kind, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.delta is outside the v3 spec
        zarr.create_array(MemoryStore(files), name="a", **spec)
    return json.loads(files["a/zarr.json"].to_bytes())


def test_templates_are_zarrs():
    """Each zarr.json template, key order included, is the one zarr makes, and so is the indent."""
    from zarr_store.meta_io import JSON_INDENT, META_ARRAYS, template

    kinds = [("group",), ("lead_mask",), *[(name,) for name in META_ARRAYS],
             *[("signals", codec, window, shard) for codec in ("zstd", "lz4", "delta")
               for window, shard in ((5000, 512), (2500, 64))]]
    for kind in kinds:
        ours, theirs = template(*kind), _zarr_template(*kind)
        assert json.dumps(ours) == json.dumps(theirs), kind
    assert JSON_INDENT == zarr.config.get("json_indent")


def test_grow_writes_zarrs_zarr_json(tmp_path):
    """The signals shape a conversion sets itself is the zarr.json zarr's own resize writes."""
    from zarr_store.meta_io import grow as _grow
    from zarr_store.shard_writer import ChunkCodec, StoreIO

    filters, compressors = ChunkCodec("delta", blocksize=12 * 50 * 2).zarr_codecs()
    for name in ("ours", "ref"):
        zarr.create_array(str(tmp_path), name=name, shape=(0, 12, 50), dtype="int16", chunks=(1, 12, 50),
                          shards=(4, 12, 50), filters=filters, compressors=compressors, fill_value=0,
                          dimension_names=("row", "lead", "time"))
    zarr.open_array(str(tmp_path / "ref")).resize((9, 12, 50))
    _grow(StoreIO(str(tmp_path)), "ours", (9, 12, 50))
    assert (tmp_path / "ours" / "zarr.json").read_bytes() == (tmp_path / "ref" / "zarr.json").read_bytes()
    with pytest.raises(ValueError, match="shape"):
        _grow(StoreIO(str(tmp_path)), "ours", (8, 12, 50))


def test_store_zarr_json_files_are_zarrs(ptbxl_store, tmp_path):
    """The group, _convert group and signals zarr.json a conversion writes itself are byte for byte
    those zarr writes for the same attributes and array."""
    from zarr_store.shard_writer import ChunkCodec

    store, summary, _ = ptbxl_store
    ours = {key: (store / key).read_bytes() for key in ("zarr.json", "_convert/zarr.json", "signals/zarr.json")}
    ref = tmp_path / "ref.zarr"
    group = zarr.open_group(str(ref), mode="w", attributes=json.loads(ours["zarr.json"])["attributes"])
    group.create_group("_convert", attributes=json.loads(ours["_convert/zarr.json"])["attributes"])
    filters, compressors = ChunkCodec("zstd", blocksize=12 * 5000 * 2).zarr_codecs()
    group.create_array("signals", shape=(summary.rows_total, 12, 5000), dtype="int16", chunks=(1, 12, 5000),
                       shards=(8, 12, 5000), filters=filters, compressors=compressors, fill_value=0,
                       dimension_names=("row", "lead", "time"))
    assert ours == {key: (ref / key).read_bytes() for key in ours}
