"""zarr_store.runner: where conversion runs (worker processes, Dask clusters, in-process for memory://):
the same store every way."""

from __future__ import annotations

import gc
import uuid

import numpy as np

from tests.test_zarr_store.archives import assert_same_arrays, load, write_archive
from zarr_store.convert import convert
from zarr_store.runner import frozen_heap


def test_memory_url_and_dask_local_cluster(tmp_path):
    from distributed import Client, LocalCluster

    arch = write_archive(tmp_path / "arch", n=6, fs=250, bad=("too short",))
    ref = convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    url = f"memory://store-{uuid.uuid4().hex}"
    mem = convert([arch.root], url, progress=False, shard_size=4, workers=2)
    assert mem.converted == ref.converted == 6 and mem.skipped == {"too short": 1}
    assert_same_arrays(load(url), load(tmp_path / "ref.zarr"))
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with Client(cluster):
            dsk = convert([arch.root], tmp_path / "dask.zarr", progress=False, shard_size=4,
                          dask=cluster.scheduler_address)
    assert dsk.converted == 6
    assert_same_arrays(load(tmp_path / "dask.zarr"), load(tmp_path / "ref.zarr"))


def test_memory_output_with_dask_local_stays_in_process(tmp_path):
    """dask="local" (or workers > 1) into memory://: worker processes cannot see this process's memory
    file system, so the conversion runs in-process and the store holds every row."""
    arch = write_archive(tmp_path / "arch", n=5, fs=250, bad=("flat",))
    convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    url = f"memory://dask-{uuid.uuid4().hex}"
    got = convert([arch.root], url, progress=False, shard_size=4, dask="local", workers=2)
    assert got.converted == 5 and got.rows_total == 5 and "in-process" in got.note
    assert_same_arrays(load(url), load(tmp_path / "ref.zarr"))


def test_dask_local_starts_its_own_cluster(tmp_path):
    """dask="local": the Runner starts a LocalCluster of worker processes; same store as in-process."""
    arch = write_archive(tmp_path / "arch", n=5, fs=360, seconds=12.0, bad=("truncated",))
    ref = convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    got = convert([arch.root], tmp_path / "dask.zarr", progress=False, shard_size=4, dask="local")
    assert got.converted == ref.converted == 5 and got.skipped == ref.skipped == {"truncated": 1}
    assert got.shards_written == ref.shards_written == 3 and got.note == ""
    assert_same_arrays(load(tmp_path / "dask.zarr"), load(tmp_path / "ref.zarr"))


def test_frozen_heap_leaves_a_callers_freeze():
    """A caller that froze its own heap keeps it frozen after a conversion (gc.unfreeze does not nest);
    a heap with nothing frozen before is unfrozen again."""
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        assert gc.get_freeze_count() > 0
    assert gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with frozen_heap():
            pass
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()
