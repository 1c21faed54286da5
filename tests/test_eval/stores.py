"""Test stores of real PTB-XL records (../shared/data), for the evaluation and command tests."""

import os
from pathlib import Path


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


def convert_ptbxl(shared_data: Path, out: Path, n: int | None = None) -> str:
    """Records 1..n (all 500 when None: the folder itself, whose parent holds scp_statements.csv)."""
    from zarr_store.convert import convert

    src = shared_data / "ptbxl" / "records500" if n is None else ptbxl_subset(shared_data, out.parent / "src", n)
    summary = convert([src], out, progress=False)
    assert summary.rows == (500 if n is None else n), summary
    return str(out)


def save_tiny_checkpoint(run_dir: Path, seed: int, preset: str = "tiny") -> Path:
    """A checkpoint (crema_fast.train.checkpoint format) of a freshly initialised ``preset`` model built
    after torch.manual_seed(seed) with sdpa attention, as load_encoder builds its random-init model."""
    import torch

    from crema_fast.model import CremaModel
    from crema_fast.train.checkpoint import save_checkpoint
    from crema_fast.train.config import build_config

    cfg = build_config(preset)
    torch.manual_seed(seed)
    model = CremaModel(cfg.model, cfg.loss, attention="sdpa")
    return save_checkpoint(run_dir, {"step": 2, "model": model.state_dict(), "optimizer": {}, "scheduler": {},
                                     "config": cfg.to_dict()})


def wfdb_store(tmp_path, comments_per_record):
    """A store of synthetic 12-lead records written with wfdb.wrsamp, each with the given comments."""
    import numpy as np
    import wfdb

    from zarr_store.convert import convert

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for k, comments in enumerate(comments_per_record):
        sig = rng.normal(0, 0.3, size=(5000, 12))
        wfdb.wrsamp(f"R{k:03d}", fs=500, units=["mV"] * 12, sig_name=names, p_signal=sig, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, comments=comments, write_dir=str(src))
    out = tmp_path / "s.zarr"
    convert([src], out, progress=False)
    return str(out)
