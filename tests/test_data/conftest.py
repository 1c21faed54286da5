"""Fixtures of the data-path tests: real PTB-XL records as arrays, and small stores converted from them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.test_zarr_store.archives import copy_subset, ptbxl_names


def read_ptbxl(shared_data: Path, n: int, rate: int = 500) -> np.ndarray:
    """The first ``n`` PTB-XL records at ``rate`` (500 or 100) as int16 µV (n, 12, T) (gain 1000/mV,
    format 16: the samples are the file, interleaved by lead)."""
    folder = shared_data / "ptbxl" / ("records500" if rate == 500 else "records100") / "00000"
    suffix = "_hr" if rate == 500 else "_lr"
    out = []
    for i in range(1, n + 1):
        raw = np.fromfile(folder / f"{i:05d}{suffix}.dat", dtype="<i2")
        out.append(raw.reshape(-1, 12).T)
    return np.ascontiguousarray(np.stack(out))


@pytest.fixture(scope="session")
def ptbxl500(shared_data) -> np.ndarray:
    """64 real ECGs, int16 µV (64, 12, 5000) at 500 Hz."""
    return read_ptbxl(shared_data, 64, 500)


def _source_tree(shared_data: Path, root: Path, n_ptbxl: int, others: bool) -> list[Path]:
    """convert's input without copying the data: symlinks to the first n_ptbxl PTB-XL records (+ the 4
    other archives, each whole)."""
    out = [copy_subset(shared_data / "ptbxl", root / "ptbxl", ptbxl_names(shared_data, n_ptbxl))]
    if others:
        dbs = [db for db in sorted((shared_data / "other").iterdir()) if db.is_dir()]
        names = sorted({f"{db.name}/{f.name.split('.')[0]}" for db in dbs for f in db.iterdir()
                        if f.name != "RECORDS"})
        out.append(copy_subset(shared_data / "other", root / "other", names))
    return out


@pytest.fixture(scope="session")
def mixed_store(shared_data, tmp_path_factory) -> Path:
    """A 500 Hz store of 40 PTB-XL records and the 4 other archives (360, 250, 1000 Hz; missing leads;
    records shorter and longer than the window), 64 rows per shard: a few hundred rows."""
    from zarr_store.convert import convert

    root = tmp_path_factory.mktemp("mixed_src")
    out = tmp_path_factory.mktemp("stores") / "mixed500.zarr"
    convert(_source_tree(shared_data, root, 40, True), out, rate=500, progress=False, shard_size=64)
    return out


@pytest.fixture(scope="session")
def store250(shared_data, tmp_path_factory) -> Path:
    """A 250 Hz store of 24 PTB-XL records (the model rate: no resampling online)."""
    from zarr_store.convert import convert

    root = tmp_path_factory.mktemp("src250")
    out = tmp_path_factory.mktemp("stores") / "ptbxl250.zarr"
    convert(_source_tree(shared_data, root, 24, False), out, rate=250, progress=False, shard_size=16)
    return out
