"""zarr_store.reader: values equal plain zarr for every access pattern, codec and fallback; pickling,
worker processes, memory:// and corrupt chunks.

Stores are built from the real PTB-XL 500 Hz records (int16 µV read straight from the format-16 .dat
files; the conversion itself is tested in test_convert.py) with ``zarr.create_array`` in the layout of
the brief, small shards where a test needs several of them.
"""

from __future__ import annotations

import multiprocessing as mp
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from tests.test_zarr_store.archives import copy_subset, ptbxl_names
from zarr_store.errors import BadArgumentError, CorruptChunkError
from zarr_store.reader import StoreReader

T = 5000
# numcodecs.delta is outside the Zarr v3 spec: zarr warns whenever it opens such an array.
pytestmark = pytest.mark.filterwarnings("ignore:Numcodecs codecs are not in the Zarr version 3")
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


@pytest.fixture(scope="module")
def ptbxl_signals(shared_data: Path) -> np.ndarray:
    """int16 (64, 12, 5000): the first 64 PTB-XL 500 Hz records (gain 1000/mV: digital units are µV)."""
    files = sorted((shared_data / "ptbxl" / "records500").glob("*/*_hr.dat"))[:64]
    return np.stack([np.fromfile(f, dtype="<i2").reshape(T, 12).T for f in files])


def make_store(path, signals: np.ndarray, n: int, *, cname="zstd", delta=False, chunk_rows=1, shard_rows=512,
               compressors=None, write_rows=None) -> str:
    """A store of ``n`` rows (the records repeated) in the brief's layout; returns its path/URL.

    write_rows: rows to write (default all); shards never touched stay missing (fill value 0).
    """
    path = str(path)
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update(format_version=1, rate=500, window=T, window_s=10.0, leads=LEADS, units="uV")
    if compressors is None:
        compressors = [BloscCodec(cname=cname, clevel=1, shuffle="bitshuffle", typesize=2)]
    filters = None
    if delta:
        from zarr.codecs.numcodecs import Delta

        filters = [Delta(dtype="int16")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.delta is outside the v3 spec: zarr warns
        arr = group.create_array("signals", shape=(n, 12, T), dtype="int16", chunks=(chunk_rows, 12, T),
                                 shards=(shard_rows, 12, T) if shard_rows else None, filters=filters,
                                 compressors=compressors, fill_value=0)
    rows = np.arange(n) if write_rows is None else np.asarray(write_rows)
    if len(rows):
        arr[int(rows[0]): int(rows[-1]) + 1] = signals[rows % len(signals)]
    rng = np.random.default_rng(n)
    lead_mask = rng.random((n, 12)) > 0.1
    group.create_array("lead_mask", shape=(n, 12), dtype=bool, chunks=(n, 12))[:] = lead_mask
    group.create_array("valid_length", shape=(n,), dtype="int32", chunks=(n,))[:] = rng.integers(1000, T + 1, n)
    group.create_array("record_id", shape=(n,), dtype=str, chunks=(n,))[:] = [f"r{i:05d}" for i in range(n)]
    return path


def expected(path: str, idx) -> np.ndarray:
    """The oracle: zarr's own indexing, one row at a time."""
    arr = zarr.open_array(path, path="signals", mode="r")
    return np.stack([arr[int(i)] for i in idx]) if len(idx) else np.empty((0, 12, T), np.int16)


def patterns(n: int, shard_rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    across = max(0, min(shard_rows - 5, n - 12))
    return {
        "contiguous": np.arange(across, across + 12),  # crosses a shard boundary
        "shuffled": rng.permutation(n)[:20],
        "random_repeats": np.r_[rng.integers(0, n, 17), 3, 3, n - 1, 3],
        "negative": np.array([-1, -n, 0]),
        "single": np.array([n // 2]),
        "empty": np.array([], dtype=np.int64),
    }


@pytest.mark.parametrize("codec", ["zstd", "lz4", "delta"])
def test_direct_reader_equals_zarr(tmp_path, ptbxl_signals, codec):
    n, shard = 40, 16  # three shards, the last one partial
    path = make_store(tmp_path / "s.zarr", ptbxl_signals, n, cname="lz4" if codec == "lz4" else "zstd",
                      delta=codec == "delta", shard_rows=shard)
    r = StoreReader(path)
    assert r.path_kind == "direct", r.fallback_reason
    assert (len(r), r.rate, r.window, r.leads, r.shard_rows) == (n, 500, T, LEADS, shard)
    for name, idx in patterns(n, shard).items():
        got = r.read_signals(idx)
        want = expected(path, np.where(idx < 0, idx + n, idx))
        assert got.dtype == np.int16 and got.shape == (len(idx), 12, T), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    # The stored values are the real records.
    np.testing.assert_array_equal(r.read_signals([0, 17]), ptbxl_signals[[0, 17]])


def test_default_layout_512_shards_and_out_buffer(tmp_path, ptbxl_signals):
    n = 530  # one full shard of 512 and a partial one
    path = make_store(tmp_path / "s.zarr", ptbxl_signals, n)
    r = StoreReader(path)
    assert r.path_kind == "direct"
    idx = np.r_[np.arange(500, 530), np.random.default_rng(1).integers(0, n, 40), 511, 512, 511]
    out = np.full((len(idx), 12, T), 7, dtype=np.int16)
    assert r.read_signals(idx, out=out) is out
    np.testing.assert_array_equal(out, ptbxl_signals[idx % len(ptbxl_signals)])
    with pytest.raises(ValueError, match="out"):
        r.read_signals(idx, out=np.empty((len(idx), 12, T), np.int32))


def test_read_batch_metadata(tmp_path, ptbxl_signals):
    n = 40
    path = make_store(tmp_path / "s.zarr", ptbxl_signals, n, shard_rows=16)
    r = StoreReader(path)
    idx = np.array([39, 2, 2, 20, 0])
    batch = r.read(idx, columns=("record_id",))
    group = zarr.open_group(path, mode="r")
    np.testing.assert_array_equal(batch.signals, expected(path, idx))
    np.testing.assert_array_equal(batch.lead_mask, group["lead_mask"][:][idx])
    np.testing.assert_array_equal(batch.valid_length, group["valid_length"][:][idx])
    assert batch.valid_length.dtype == np.int32 and batch.lead_mask.dtype == bool
    np.testing.assert_array_equal(batch.index, idx)
    assert list(batch.meta["record_id"]) == [f"r{i:05d}" for i in idx]
    np.testing.assert_array_equal(r.column("valid_length"), group["valid_length"][:])
    with pytest.raises(BadArgumentError, match="nope"):
        r.column("nope")
    with pytest.raises(IndexError, match="40"):
        r.read_signals([40])
    with pytest.raises(TypeError, match="indices"):
        r.read_signals([0.5])


def test_several_records_per_chunk_and_missing_shards(tmp_path, ptbxl_signals):
    n = 48
    # chunks of 4 records in shards of 8; only rows 8..19 written: shards 0 and 3..5 never exist,
    # shard 2 holds one written chunk and one empty one.
    path = make_store(tmp_path / "s.zarr", ptbxl_signals, n, chunk_rows=4, shard_rows=8,
                      write_rows=np.arange(8, 20))
    r = StoreReader(path)
    assert r.path_kind == "direct"
    for name, idx in patterns(n, 8).items():
        np.testing.assert_array_equal(r.read_signals(idx), expected(path, np.where(idx < 0, idx + n, idx)),
                                      err_msg=name)
    assert not r.read_signals([0, 47]).any() and r.read_signals([8]).any()


@pytest.mark.parametrize("kind", ["zstd_codec", "unsharded", "forced"])
def test_fallback_to_zarr(tmp_path, ptbxl_signals, kind):
    n = 20
    if kind == "zstd_codec":
        path = make_store(tmp_path / "s.zarr", ptbxl_signals, n, shard_rows=8, compressors=[ZstdCodec(level=1)])
    else:
        path = make_store(tmp_path / "s.zarr", ptbxl_signals, n, shard_rows=None if kind == "unsharded" else 8)
    r = StoreReader(path, mode="zarr" if kind == "forced" else "auto")
    assert r.path_kind == "zarr"
    assert r.fallback_reason
    for name, idx in patterns(n, 8).items():
        np.testing.assert_array_equal(r.read_signals(idx), expected(path, np.where(idx < 0, idx + n, idx)),
                                      err_msg=name)
    if kind != "forced":
        with pytest.raises(BadArgumentError, match="directly"):
            StoreReader(path, mode="direct")


def test_memory_store(ptbxl_signals):
    url = make_store("memory://test_reader/s.zarr", ptbxl_signals, 24, shard_rows=8, delta=True)
    r = StoreReader(url)
    assert r.path_kind == "direct"
    idx = np.array([23, 0, 9, 9, 8, 15, 16])
    np.testing.assert_array_equal(r.read_signals(idx), ptbxl_signals[idx % len(ptbxl_signals)])
    np.testing.assert_array_equal(r.read(idx).lead_mask, zarr.open_group(url, mode="r")["lead_mask"][:][idx])


def test_not_a_store(tmp_path):
    with pytest.raises(BadArgumentError, match="Zarr v3 group"):
        StoreReader(tmp_path)
    with pytest.raises(BadArgumentError, match=f"got no {tmp_path}/zarr.json"):
        StoreReader(tmp_path)
    with pytest.raises(BadArgumentError, match=f"store {tmp_path}/missing: no such file or folder"):
        StoreReader(tmp_path / "missing")
    with pytest.raises(BadArgumentError, match="mode"):
        StoreReader(tmp_path, mode="fast")


def _child_read(reader: StoreReader, idx: list[int]) -> np.ndarray:
    return reader.read_signals(idx)


def test_pickle_and_worker_processes(tmp_path, ptbxl_signals):
    path = make_store(tmp_path / "s.zarr", ptbxl_signals, 40, shard_rows=16, cname="lz4")
    r = StoreReader(path)
    idx = [39, 1, 17, 1]
    want = r.read_signals(idx)  # the parent has open files and cached indexes now
    clone = pickle.loads(pickle.dumps(r))
    assert clone._maps == {} and clone._indexes == {}
    np.testing.assert_array_equal(clone.read_signals(idx), want)
    with mp.get_context("spawn").Pool(1) as pool:  # spawn pickles the reader
        np.testing.assert_array_equal(pool.apply(_child_read, (r, idx)), want)

    import torch

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(idx)

        def __getitem__(self, i):
            return torch.from_numpy(r.read_signals([idx[i]])[0])

    # The default (fork) start method copies the reader with its descriptors: it must start afresh.
    loader = torch.utils.data.DataLoader(Rows(), batch_size=4, num_workers=1)
    (batch,) = list(loader)
    np.testing.assert_array_equal(batch.numpy(), want)


def _shard_file(path: str, shard: int) -> Path:
    return Path(path, "signals", "c", str(shard), "0", "0")


def test_corrupt_chunk_names_chunk_and_rows(tmp_path, ptbxl_signals):
    path = make_store(tmp_path / "s.zarr", ptbxl_signals, 40, shard_rows=16)
    shard_file = _shard_file(path, 1)
    raw = bytearray(shard_file.read_bytes())
    index = np.frombuffer(bytes(raw[-(16 * 16 + 4):-4]), dtype="<u8").reshape(16, 2)
    off, nbytes = (int(v) for v in index[3])
    for start in (off, off + nbytes // 2):  # the Blosc header, then the middle of the stream
        bad = bytearray(raw)
        bad[start: start + 64] = bytes(b ^ 0xA5 for b in bad[start: start + 64])
        shard_file.write_bytes(bytes(bad))
        r = StoreReader(path)
        with pytest.raises(CorruptChunkError) as err:
            r.read_signals([0, 19])  # row 19 = chunk 3 of shard 1
        msg = str(err.value)
        assert "chunk 3" in msg and str(shard_file) in msg and "rows 19..19, records r00019)" in msg, msg
        np.testing.assert_array_equal(r.read_signals([18, 20]), ptbxl_signals[[18, 20]])
    # A damaged shard index fails its crc32c.
    bad = bytearray(raw)
    bad[-20] ^= 0xFF
    shard_file.write_bytes(bytes(bad))
    with pytest.raises(CorruptChunkError, match="crc32c") as err:
        StoreReader(path).read_signals([20])
    assert "rows 16..31" in str(err.value)


@pytest.mark.parametrize("codec", ["zstd", "lz4", "delta"])
def test_reader_on_converted_store(tmp_path, shared_data, ptbxl_signals, codec):
    from zarr_store.convert import convert

    archive = copy_subset(shared_data / "ptbxl", tmp_path / "ptbxl", ptbxl_names(shared_data, 24),
                          ["ptbxl_database.csv"], records_file=True)
    store = tmp_path / "s.zarr"
    convert([archive], store, codec=codec, shard_size=8, progress=False)
    r = StoreReader(store)
    assert r.path_kind == "direct", r.fallback_reason
    for name, idx in patterns(24, 8).items():
        np.testing.assert_array_equal(r.read_signals(idx), expected(str(store), np.where(idx < 0, idx + 24, idx)),
                                      err_msg=name)
    batch = r.read(np.arange(24)[::-1], columns=("record_id",))
    # Rows follow the sorted record order; PTB-XL's digital units are µV, so values are the .dat samples.
    np.testing.assert_array_equal(batch.signals, ptbxl_signals[:24][::-1])
    assert batch.meta["record_id"][-1] == "records500/00000/00001_hr"
    assert batch.lead_mask.all() and (batch.valid_length == T).all()


def test_file_system_without_range_reads_falls_back(ptbxl_signals):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class NoRanges(MemoryFileSystem):
        protocol = "noranges"
        store, pseudo_dirs = {}, [""]  # its own namespace, apart from memory://

        def cat_ranges(self, *args, **kwargs):
            raise NotImplementedError("no range reads")

    fsspec.register_implementation("noranges", NoRanges, clobber=True)
    url = make_store("noranges://s.zarr", ptbxl_signals, 12, shard_rows=8)
    r = StoreReader(url)
    assert r.path_kind == "direct"
    idx = np.array([11, 0, 4, 4])
    np.testing.assert_array_equal(r.read_signals(idx), ptbxl_signals[idx])
    assert r.path_kind == "zarr" and "range reads" in r.fallback_reason


def test_threads_share_one_reader(tmp_path, ptbxl_signals):
    from concurrent.futures import ThreadPoolExecutor

    path = make_store(tmp_path / "s.zarr", ptbxl_signals, 64, shard_rows=8)
    r = StoreReader(path)
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 64, 16) for _ in range(12)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(r.read_signals, batches))
    for idx, got in zip(batches, results):
        np.testing.assert_array_equal(got, ptbxl_signals[idx % len(ptbxl_signals)])


def test_store_without_metadata_arrays(tmp_path):
    """A bare signals array: all leads present, full valid length, fill values where nothing was written."""
    group = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    arr = group.create_array("signals", shape=(5, 12, 30), dtype="int16", chunks=(1, 12, 30), shards=(4, 12, 30))
    arr[1] = np.arange(360, dtype=np.int16).reshape(12, 30)
    r = StoreReader(tmp_path / "s.zarr")
    batch = r.read([1, 4, 1])
    assert batch.lead_mask.shape == (3, 12) and batch.lead_mask.all()
    np.testing.assert_array_equal(batch.valid_length, [30, 30, 30])
    np.testing.assert_array_equal(batch.signals, arr.oindex[[1, 4, 1]])
    assert (r.rate, r.window, r.leads, r.shard_rows) == (0, 30, [], 4)


def test_patient_ids_and_a_store_that_predates_them(shared_data, tmp_path):
    """Real PTB-XL records: patient_ids() are the csv's; the same store without its patient_id array
    (as converters before it wrote) still opens and reads, and patient_ids() says what to do."""
    import shutil

    import pandas as pd

    from zarr_store.convert import convert
    from zarr_store.errors import MissingColumnError, StoreError

    names = ptbxl_names(shared_data, 5)
    root = copy_subset(shared_data / "ptbxl", tmp_path / "ptbxl", names, ["ptbxl_database.csv"])
    store = tmp_path / "s.zarr"
    convert([root], store, progress=False)
    db = pd.read_csv(shared_data / "ptbxl" / "ptbxl_database.csv", index_col="ecg_id")
    r = StoreReader(store)
    ids = [int(Path(n).name[:5]) for n in r.column("record_id")]
    assert list(r.patient_ids()) == [str(int(p)) for p in db.loc[ids, "patient_id"]]
    before = r.read([0, 4]).signals
    shutil.rmtree(store / "patient_id")
    old = StoreReader(store)
    assert len(old) == 5 and not old.has_column("patient_id")
    np.testing.assert_array_equal(old.read([0, 4]).signals, before)
    with pytest.raises(MissingColumnError) as err:
        old.patient_ids()
    assert isinstance(err.value, StoreError)
    msg = str(err.value)
    assert "\n" not in msg and repr(str(store)) in msg and "predates patient_id" in msg and "re-convert" in msg


def test_flipped_byte_in_a_checksummed_chunk(tmp_path, shared_data, ptbxl_signals):
    """One byte flipped inside a chunk's compressed stream decodes, without the chunk's crc32c, to a
    plausible ECG; with it (what convert writes) the reader raises, naming the store's shard file and
    the row, and every other row still reads. zarr itself opens and reads the store (and rejects the
    flipped chunk too); a store written without the crc32c codec still reads (test_direct_reader_...)."""
    from zarr_store.convert import convert

    archive = copy_subset(shared_data / "ptbxl", tmp_path / "ptbxl", ptbxl_names(shared_data, 12),
                          ["ptbxl_database.csv"], records_file=True)
    store = tmp_path / "s.zarr"
    convert([archive], store, shard_size=8, progress=False)
    np.testing.assert_array_equal(zarr.open_array(str(store), path="signals", mode="r")[:], ptbxl_signals[:12])
    shard_file = _shard_file(str(store), 1)
    raw = bytearray(shard_file.read_bytes())
    off, nbytes = (int(v) for v in np.frombuffer(bytes(raw[-(8 * 16 + 4):-4]), "<u8").reshape(8, 2)[2])
    raw[off + nbytes // 2] ^= 0x10  # row 10 = chunk 2 of shard 1, mid-stream
    shard_file.write_bytes(bytes(raw))
    r = StoreReader(store)
    assert r.layout.chunk_crc
    with pytest.raises(CorruptChunkError) as err:
        r.read_signals([10])
    msg = str(err.value)
    assert str(shard_file) in msg and "rows 10..10" in msg and "crc32c mismatch" in msg, msg
    np.testing.assert_array_equal(r.read_signals([9, 11, 0]), ptbxl_signals[[9, 11, 0]])
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(str(store), path="signals", mode="r")[10]


def test_zarr_written_crc32c_store_reads_directly(tmp_path, ptbxl_signals):
    from zarr.codecs import Crc32cCodec

    comp = [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=2), Crc32cCodec()]
    path = make_store(tmp_path / "c.zarr", ptbxl_signals, 20, shard_rows=8, compressors=comp)
    r = StoreReader(path, mode="direct")
    assert r.layout.chunk_crc
    idx = np.array([19, 0, 7, 8, 3])
    np.testing.assert_array_equal(r.read_signals(idx), expected(path, idx))


def test_append_to_a_store_without_chunk_crc32c_is_refused(tmp_path, shared_data, ptbxl_signals):
    """New chunks carry a crc32c that an older store's zarr.json does not declare: appending would mix
    the two, so convert refuses with one line, and the old store keeps reading."""
    from zarr_store.convert import convert

    path = make_store(tmp_path / "old.zarr", ptbxl_signals, 4, shard_rows=8)
    archive = copy_subset(shared_data / "ptbxl", tmp_path / "ptbxl", ptbxl_names(shared_data, 2),
                          ["ptbxl_database.csv"], records_file=True)
    with pytest.raises(BadArgumentError, match="written before chunks carried a crc32c"):
        convert([archive], path, shard_size=8, progress=False)
    np.testing.assert_array_equal(StoreReader(path).read_signals([3]), ptbxl_signals[[3]])
