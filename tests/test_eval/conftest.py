"""Fixtures of the evaluation tests: real PTB-XL records of ../shared/data converted with zarr_store."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ptbxl_store(shared_data, tmp_path_factory) -> str:
    """All 500 PTB-XL records of ../shared/data (500 Hz) in one store; its source folder's parent
    holds scp_statements.csv, so the label sets find it themselves."""
    from zarr_store.convert import convert

    out = tmp_path_factory.mktemp("eval") / "ptbxl500.zarr"
    summary = convert([shared_data / "ptbxl" / "records500"], out, progress=False)
    assert summary.rows == 500, summary
    return str(out)


def ptbxl_subset(shared_data: Path, root: Path, n: int) -> Path:
    """A PTB-XL folder of symlinks to records 1..n with ptbxl_database.csv (no scp_statements.csv)."""
    folder = root / "ptbxl" / "records500" / "00000"
    folder.mkdir(parents=True)
    src = shared_data / "ptbxl" / "records500" / "00000"
    for i in range(1, n + 1):
        for ext in ("hea", "dat"):
            os.symlink(src / f"{i:05d}_hr.{ext}", folder / f"{i:05d}_hr.{ext}")
    os.symlink(shared_data / "ptbxl" / "ptbxl_database.csv", root / "ptbxl" / "ptbxl_database.csv")
    return root / "ptbxl"


@pytest.fixture(scope="session")
def small_store(shared_data, tmp_path_factory) -> str:
    """PTB-XL records 1-120 in a store whose sources have no scp_statements.csv."""
    from zarr_store.convert import convert

    root = tmp_path_factory.mktemp("eval_small")
    out = root / "ptbxl120.zarr"
    summary = convert([ptbxl_subset(shared_data, root / "src", 120)], out, progress=False)
    assert summary.rows == 120, summary
    return str(out)


@pytest.fixture(scope="session")
def scp_statements(shared_data) -> str:
    return str(shared_data / "ptbxl" / "scp_statements.csv")
