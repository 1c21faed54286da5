"""Fixtures of the evaluation tests: real PTB-XL records of ../shared/data converted with zarr_store."""

import pytest

from tests.test_eval.stores import convert_ptbxl


@pytest.fixture(scope="session")
def ptbxl_store(shared_data, tmp_path_factory) -> str:
    """All 500 PTB-XL records of ../shared/data (500 Hz) in one store; its source folder's parent
    holds scp_statements.csv, so the label sets find it themselves."""
    return convert_ptbxl(shared_data, tmp_path_factory.mktemp("eval") / "ptbxl500.zarr")


@pytest.fixture(scope="session")
def small_store(shared_data, tmp_path_factory) -> str:
    """PTB-XL records 1-120 in a store whose sources have no scp_statements.csv."""
    return convert_ptbxl(shared_data, tmp_path_factory.mktemp("eval_small") / "ptbxl120.zarr", 120)


@pytest.fixture(scope="session")
def scp_statements(shared_data) -> str:
    return str(shared_data / "ptbxl" / "scp_statements.csv")
