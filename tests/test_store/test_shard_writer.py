"""ShardFile (chunks streamed to the file) against build_shard (chunks held, then joined)."""

import numpy as np
import pytest
import zarr

from zarr_store.shard_writer import ChunkCodec, ChunkEncoder, ShardFile, StoreIO, build_shard, split_shard


def _chunks(n: int, empty: set[int]) -> list[bytes | None]:
    rng = np.random.default_rng(3)
    enc = ChunkEncoder(ChunkCodec("zstd", blocksize=12 * 50 * 2))
    return [None if i in empty else enc.encode(rng.normal(0, 500, (12, 50)).astype(np.int16)) for i in range(n)]


@pytest.mark.parametrize("url", ["local", "memory://shardfile-test"])
def test_streamed_shard_equals_built_shard(tmp_path, url):
    chunks = _chunks(8, empty={0, 3, 7})
    io = StoreIO(str(tmp_path / "s") if url == "local" else url)
    shard = ShardFile(io, "a/c/0", 8)
    for i, c in enumerate(chunks):
        if c is not None:
            shard.put(i, c)
    assert io.read("a/c/0") is None  # nothing visible before commit
    shard.commit()
    data = io.read("a/c/0")
    assert data == b"".join(build_shard(chunks, 8))
    assert split_shard(data, 8) == chunks


def test_streamed_shard_is_read_by_zarr(tmp_path):
    """A signals-like array written through ShardFile reads back in plain zarr, value for value."""
    codec = ChunkCodec("zstd", blocksize=12 * 50 * 2)
    filters, compressors = codec.zarr_codecs()
    arr = zarr.create_array(str(tmp_path / "z"), shape=(8, 12, 50), dtype="int16", chunks=(1, 12, 50),
                            shards=(8, 12, 50), filters=filters or None, compressors=compressors, fill_value=0)
    rng = np.random.default_rng(5)
    values = rng.normal(0, 500, (8, 12, 50)).astype(np.int16)
    values[2] = 0  # an all-fill row is left out of the shard (zarr writes it as empty too)
    shard = ShardFile(StoreIO(str(tmp_path / "z")), "c/0/0/0", 8)
    enc = ChunkEncoder(codec)
    for i in range(8):
        if values[i].any():
            shard.put(i, enc.encode(values[i]))
    shard.commit()
    np.testing.assert_array_equal(arr[:], values)


def test_out_of_order_slot_and_abort(tmp_path):
    io = StoreIO(str(tmp_path / "s"))
    shard = ShardFile(io, "a/c/0", 4)
    shard.put(2, b"xx")
    with pytest.raises(ValueError, match="slot: expected more than 2"):
        shard.put(1, b"yy")
    shard.abort()
    assert io.read("a/c/0") is None and not list((tmp_path / "s" / "a" / "c").iterdir())
