"""Faults on disk and in training: a corrupted chunk, a truncated shard, a missing zarr.json and a corrupt
checkpoint each give an error naming the file (and chunk, rows or step) and lose nothing else; a NaN
injected into a batch stops training cleanly with the last good checkpoint intact."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from crema_fast.errors import CremaError
from crema_fast.train.checkpoint import list_checkpoints, read_checkpoint
from crema_fast.train.config import build_config
from crema_fast.train.engine import NonFiniteLossError, Trainer
from tests.test_reliability.tally import TALLY
from zarr_store.errors import BadArgumentError, CorruptChunkError
from zarr_store.reader import StoreReader
from zarr_store.verify import verify_store


@pytest.fixture
def store(demo_store, tmp_path):
    out = tmp_path / "s.zarr"
    shutil.copytree(demo_store, out)
    return out


def test_corrupt_chunk_truncated_shard_missing_zarr_json(store):
    want = StoreReader(store).read_signals(np.arange(15))
    shard = store / "signals" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[5000] ^= 0x08
    shard.write_bytes(bytes(raw))
    TALLY["faults injected"] += 1
    r = StoreReader(store)
    bad = [i for i in range(15) if not _reads(r, i)]
    assert len(bad) == 1
    with pytest.raises(CorruptChunkError, match=f"{shard}.*rows {bad[0]}..{bad[0]}"):
        r.read_signals(bad)
    keep = [i for i in range(15) if i not in bad]
    np.testing.assert_array_equal(r.read_signals(keep), want[keep])  # nothing else lost
    assert [p.rows for p in verify_store(store).problems] == [(bad[0], bad[0])]
    shard.write_bytes(bytes(raw[:-7]))  # cut short
    TALLY["faults injected"] += 1
    with pytest.raises(CorruptChunkError, match=f"{shard} \\(rows 0..14\\)"):
        StoreReader(store).read_signals([0])
    (store / "zarr.json").unlink()
    TALLY["faults injected"] += 1
    with pytest.raises(BadArgumentError, match=f"got no {store}/zarr.json"):
        StoreReader(store)


def _reads(r: StoreReader, i: int) -> bool:
    try:
        r.read_signals([i])
        return True
    except CorruptChunkError:
        return False


def test_nan_batch_stops_cleanly_and_a_corrupt_checkpoint_is_named(demo_store, tmp_path, monkeypatch):
    cfg = build_config("tiny", sets=["train.batch_size=4", "train.log_every=1", "train.ckpt_every=2",
                                     "train.plots=false"], overrides={"train": {"steps": 8}})
    trainer = Trainer(cfg, tmp_path, demo_store, progress=False)
    forward = trainer._forward

    def poisoned(batch):  # step 5's batch holds a NaN sample
        if trainer.step == 4:
            batch.signal.view(-1)[7] = float("nan")
        return forward(batch)

    monkeypatch.setattr(trainer, "_forward", poisoned)
    TALLY["faults injected"] += 1
    with pytest.raises(NonFiniteLossError, match=r"step 5\b.*step_0000004\.pt"):
        trainer.fit()
    trainer.close()
    good = read_checkpoint(tmp_path)
    assert good["step"] == 4 and all(torch.isfinite(v).all() for v in good["model"].values())
    latest = list_checkpoints(tmp_path)[-1]
    raw = bytearray(latest.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    latest.write_bytes(bytes(raw))
    TALLY["faults injected"] += 1
    with pytest.raises(CremaError, match=f"checkpoint {latest} is corrupt"):
        read_checkpoint(latest)
    assert read_checkpoint(tmp_path)["step"] == 2  # the newest that verifies; nothing else lost
