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


def _blosc_shuffled(x: np.ndarray) -> np.ndarray:
    """Blosc's own bit-shuffled bytes of x: the zstd stream inside its one-block chunk, decompressed."""
    import numcodecs.blosc

    c = numcodecs.blosc.compress(x, b"zstd", 1, numcodecs.Blosc.BITSHUFFLE, x.nbytes)
    assert c[2] & 0x06 == 0x04  # bit-shuffled, not stored raw: the stream is the shuffled bytes
    size = int.from_bytes(c[20:24], "little")
    return np.frombuffer(numcodecs.Zstd().decode(c[24:24 + size]), np.uint8)


def _numpy_shuffled(x: np.ndarray) -> np.ndarray:
    """The layout by definition: row r = bit r of every element, element i at bit i % 8 of byte i // 8."""
    bits = (x.reshape(-1).view(np.uint16)[None, :] >> np.arange(16, dtype=np.uint16)[:, None]) & 1
    return np.packbits(bits.astype(np.uint8), axis=1, bitorder="little").reshape(-1)


@pytest.mark.parametrize("shape", [(12, 50), (12, 5000), (1, 8), (2, 4)])
def test_bitshuffle_equals_blosc(shape):
    from zarr_store.shard_writer import bit_shuffle

    rng = np.random.default_rng(shape[1])
    x = np.cumsum(rng.normal(0, 30, shape), axis=-1).astype(np.int16)  # compressible, both signs
    x.reshape(-1)[:2] = (-32768, 32767)
    out = bit_shuffle(x)
    np.testing.assert_array_equal(out, _numpy_shuffled(x))
    if x.nbytes >= 128:  # Blosc stores smaller chunks unshuffled
        np.testing.assert_array_equal(out, _blosc_shuffled(x))


@pytest.mark.parametrize("name", ["zstd", "delta"])
def test_zstandard_chunks_decode_through_blosc(name):
    import numcodecs

    enc = ChunkEncoder(ChunkCodec(name, blocksize=12 * 5000 * 2, crc32c=False))  # the Blosc bytes alone
    assert enc.path == "zstandard"
    rng = np.random.default_rng(7)
    for x in (np.cumsum(rng.normal(0, 30, (12, 5000)), axis=-1).astype(np.int16),
              np.zeros((12, 5000), np.int16),
              rng.integers(-32768, 32768, (12, 5000)).astype(np.int16)):  # incompressible
        got = enc.encode(x)
        want = numcodecs.blosc.compress(numcodecs.Delta("<i2").encode(x) if name == "delta" else x,
                                        b"zstd", 1, numcodecs.Blosc.BITSHUFFLE, x.nbytes)
        assert got[:12] == want[:12]  # versions, flags, typesize, nbytes, blocksize
        dec = numcodecs.Blosc().decode(got)
        if name == "delta":
            dec = numcodecs.Delta("<i2").decode(dec)
        np.testing.assert_array_equal(np.frombuffer(dec, np.int16).reshape(12, 5000), x)
        if not x.any():
            assert len(got) < 1000
        elif x.std() > 10000:  # Blosc stores it raw (memcpy flag), and so does the encoder, byte for byte
            assert got == want and got[2] & 0x02


def test_encoder_path_falls_back_to_blosc(monkeypatch):
    import sys

    import numcodecs

    x = np.cumsum(np.random.default_rng(2).normal(0, 30, (12, 50)), axis=-1).astype(np.int16)
    want = numcodecs.blosc.compress(x, b"zstd", 1, numcodecs.Blosc.BITSHUFFLE, x.nbytes)
    assert ChunkEncoder(ChunkCodec("lz4", blocksize=1200)).path == "blosc"
    assert ChunkEncoder(ChunkCodec("zstd")).path == "blosc"  # Blosc's own block size: several blocks
    odd = ChunkEncoder(ChunkCodec("zstd", blocksize=12 * 51 * 2))  # 612 elements, not a multiple of 8
    assert odd.path == "blosc"
    for missing in ("zstandard", "bitshuffle.ext"):  # not installed
        with monkeypatch.context() as m:
            m.setitem(sys.modules, missing, None)
            enc = ChunkEncoder(ChunkCodec("zstd", blocksize=1200, crc32c=False))  # the Blosc bytes alone
            assert enc.path == "blosc" and enc.encode(x) == want
    assert ChunkEncoder(ChunkCodec("zstd", blocksize=1200)).path == "zstandard"


@pytest.mark.parametrize("blocksize", [320, 480])
def test_near_incompressible_chunks_get_blosc_header(blocksize):
    """Where zstd's frame nearly fills Blosc's room, Blosc (zstd in a tight buffer) may store the chunk
    raw; the encoder must then do the same: its header equals numcodecs' for every chunk. With the
    limit at exactly nbytes - 8 this fails on 4 (320) and 55 (480) of these 300 chunks."""
    import numcodecs

    enc = ChunkEncoder(ChunkCodec("zstd", blocksize=blocksize, crc32c=False))  # the Blosc bytes alone
    assert enc.path == "zstandard"
    rng = np.random.default_rng(0)
    for _ in range(300):
        half = int(2 ** rng.uniform(11, 15)) // 2
        x = (rng.integers(-half, half, blocksize // 2)).astype(np.int16)
        got = enc.encode(x)
        assert got[:12] == numcodecs.blosc.compress(x, b"zstd", 1, numcodecs.Blosc.BITSHUFFLE, blocksize)[:12]
        assert int.from_bytes(got[12:16], "little") == len(got)  # cbytes, which our reader checks
        assert numcodecs.blosc.decompress(got) == x.tobytes()


def test_probe_decides_the_path(monkeypatch):
    """Sizes Blosc stores raw (under 128 bytes) or that cannot compress keep numcodecs' path without
    an error; a bit-shuffle that disagrees with Blosc's fails the probe, so chunks stay numcodecs'."""
    import numcodecs

    import zarr_store.shard_writer as sw

    for size in range(16, 272, 16):
        enc = ChunkEncoder(ChunkCodec("zstd", blocksize=size))
        x = np.arange(size // 2, dtype=np.int16)
        assert numcodecs.blosc.decompress(enc.encode(x)) == x.tobytes()
        if size < 128:
            assert enc.path == "blosc"

    shuffle = sw.bit_shuffle

    def reversed_rows(chunk):  # rows in the wrong order: still decodable by zstd, not by Blosc
        return shuffle(chunk).reshape(16, -1)[::-1].reshape(-1)

    monkeypatch.setattr(sw, "bit_shuffle", reversed_rows)
    enc = ChunkEncoder(ChunkCodec("zstd", blocksize=12 * 50 * 2))
    assert enc.path == "blosc"
    x = np.cumsum(np.random.default_rng(4).normal(0, 30, (12, 50)), axis=-1).astype(np.int16)
    assert numcodecs.blosc.decompress(enc.encode(x)) == x.tobytes()


def test_chunks_end_with_their_crc32c():
    """The default pipeline is Blosc then zarr's crc32c codec: the Blosc bytes, then their crc32c
    (little-endian), as zarr's Crc32cCodec writes and checks it."""
    import google_crc32c
    import numcodecs

    x = np.cumsum(np.random.default_rng(6).normal(0, 30, (12, 50)), axis=-1).astype(np.int16)
    got = ChunkEncoder(ChunkCodec("zstd", blocksize=1200)).encode(x)
    body = ChunkEncoder(ChunkCodec("zstd", blocksize=1200, crc32c=False)).encode(x)
    assert got == body + google_crc32c.value(body).to_bytes(4, "little")
    assert numcodecs.blosc.decompress(got[:-4]) == x.tobytes()
    assert [c.to_dict()["name"] for c in ChunkCodec("zstd").zarr_codecs()[1]] == ["blosc", "crc32c"]


def test_chunk_encoder_is_one_per_thread():
    """tasks.chunk_encoder caches an encoder per thread: a zstandard compressor must not be shared
    between threads (a Dask worker of several threads)."""
    import threading

    from zarr_store.tasks import chunk_encoder

    here = chunk_encoder("zstd", 50)
    assert chunk_encoder("zstd", 50) is here and chunk_encoder("zstd", 60) is not here
    there = []
    t = threading.Thread(target=lambda: there.append(chunk_encoder("zstd", 50)))
    t.start()
    t.join()
    assert there[0] is not here
    x = np.arange(12 * 50, dtype=np.int16).reshape(12, 50)
    assert there[0].encode(x) == here.encode(x)
