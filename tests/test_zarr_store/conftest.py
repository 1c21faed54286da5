"""Stores shared by several test modules of zarr_store (session-scoped: converted once per run)."""

from __future__ import annotations

import pytest

from tests.test_zarr_store.archives import PTBXL_N, copy_subset
from zarr_store.convert import convert


@pytest.fixture(scope="session")
def ptbxl_store(shared_data, tmp_path_factory):
    """The first PTBXL_N PTB-XL records at 500 Hz, 3 others at 100 Hz, and the 100 Hz copies of ECGs
    1 and 2 (duplicates of their 500 Hz files: skipped), symlinked with the csv, converted. Returns
    (store, summary, names of the converted records)."""
    tmp = tmp_path_factory.mktemp("ptbxl")
    src = shared_data / "ptbxl"
    names = [f"records500/00000/{i:05d}_hr" for i in range(1, PTBXL_N + 1)]
    names += [f"records100/00000/{i:05d}_lr" for i in range(PTBXL_N + 1, PTBXL_N + 4)]
    dups = [f"records100/00000/{i:05d}_lr" for i in (1, 2)]
    root = copy_subset(src, tmp / "ptbxl", names + dups, extra_files=["ptbxl_database.csv"])
    summary = convert([root], tmp / "store.zarr", progress=False, shard_size=8)
    return tmp / "store.zarr", summary, names
