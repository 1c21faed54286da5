"""Test-wide setup. Environment first: Triton reads TRITON_INTERPRET when a kernel is decorated,
so it must be set before anything imports a ``kernels`` module (see shared/notes/triton-on-cpu.md)."""

import os

if not os.environ.get("CREMA_GPU_LANE"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The interpreter runs tl.dot as numpy matmul; BLAS/OpenMP threads made small cases many times slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real PhysioNet records (CI has them at the same relative path)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real records not found at {SHARED_DATA}")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # torch missing or broken: the GPU lane cannot run anyway
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA (GPU lane)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory) -> str:
    """A store of the 15 shipped PTB-XL demo records (500 Hz, 10 s), converted with zarr_store.convert
    (the training and command tests share it)."""
    from crema_fast.commands._data import DEMO_DATA
    from zarr_store.convert import convert

    out = Path(tmp_path_factory.mktemp("demo")) / "demo.zarr"
    summary = convert([DEMO_DATA], out, progress=False)
    assert summary.rows == 15, summary
    return str(out)
