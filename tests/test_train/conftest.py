"""Fixtures of the training tests: the shipped demo records converted once per session."""

from pathlib import Path

import pytest

from crema_fast.train.cli import DEMO_DATA


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> str:
    """A store of the 15 shipped PTB-XL demo records (500 Hz, 10 s), converted with zarr_store.convert."""
    from zarr_store.convert import convert

    out = Path(tmp_path_factory.mktemp("demo")) / "demo.zarr"
    summary = convert([DEMO_DATA], out, progress=False)
    assert summary.rows == 15, summary
    return str(out)
