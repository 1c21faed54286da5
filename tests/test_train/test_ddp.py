"""The same global batch, split: over gradient-accumulation steps and over 2 DDP processes (gloo, CPU).

Both runs are fed the batches of one ECGLoader (same crops, same masks) cut into parts, so the only
differences from one process taking the whole batch are the order of float reductions (and, for DDP,
NT-Xent's negatives gathered across ranks, which the loss does exactly). Tolerance: relative 1e-5 on
each logged loss over 6 optimizer steps (measured: at most 1.4e-7 for accumulation and 7e-8 for DDP:
float32 reductions in another order, carried through AdamW's updates).

This file is also the worker script that ``python -m torch.distributed.run`` launches.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

VIEW_FIRST = ("ids_keep", "mask", "ids_restore")  # (2, B, ...): the batch is dim 1


def slice_batch(batch, lo: int, hi: int):
    """ECGs lo:hi of a Batch (every tensor field cut along its batch dimension)."""
    out = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor):
            out[f.name] = v[:, lo:hi] if f.name in VIEW_FIRST else v[lo:hi]
    return dataclasses.replace(batch, **out)


class SliceLoader:
    """Each batch of ``loader`` cut into ``parts`` equal parts, of which parts ``keep`` are yielded in order
    (DDP rank r of W: parts=W, keep=[r]; grad accumulation A on one process: parts=A, keep=range(A))."""

    def __init__(self, loader, parts: int, keep):
        self.loader, self.parts, self.keep = loader, parts, list(keep)

    def __len__(self):
        return len(self.loader) * len(self.keep)

    @property
    def epoch(self):
        return self.loader.epoch

    def set_epoch(self, epoch):
        self.loader.set_epoch(epoch)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, d):
        self.loader.load_state_dict(d)

    def __iter__(self):
        for batch in self.loader:
            n = batch.signal.shape[0] // self.parts
            for k in self.keep:
                yield slice_batch(batch, k * n, (k + 1) * n)


def _cfg(*sets):
    from crema_fast.train.config import build_config

    return build_config("tiny", sets=["train.steps=6", "train.batch_size=6", "train.log_every=1",
                                      "train.ckpt_every=1000", "train.plots=false", "optim.warmup_steps=2",
                                      "optim.lr=2e-3", *sets])


def _run(cfg, run_dir, store, parts, keep):
    from crema_fast.data.loader import ECGLoader
    from crema_fast.train.engine import Trainer

    # One global loader (rank 0 of 1) on every process: the same batches everywhere.
    loader = ECGLoader(store, cfg.data, cfg.mask, cfg.train.batch_size, seed=cfg.train.seed)
    trainer = Trainer(cfg, run_dir, store, loader=SliceLoader(loader, parts, keep), progress=False)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return [json.loads(r)["loss"] for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_grad_accumulation_equals_one_batch(demo_store, tmp_path):
    """With lam = 0 the loss is the masked MSE, a mean over equally many patches per ECG, so 3 micro-batches
    of 2 accumulate to the gradient of the batch of 6 (NT-Xent's negatives would differ: micro-batch-local)."""
    whole = _run(_cfg("loss.lam=0"), tmp_path / "one", demo_store, 1, [0])
    accum = _run(_cfg("loss.lam=0", "optim.grad_accum=3"), tmp_path / "acc", demo_store, 3, range(3))
    assert whole[-1] < whole[0]  # the weights moved: the comparison is not of untrained models
    assert accum == pytest.approx(whole, rel=1e-5)


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(demo_store, tmp_path):
    single = _run(_cfg(), tmp_path / "single", demo_store, 1, [0])
    # A collective that waits 120 s fails naming itself; a rank stuck elsewhere prints every thread's
    # stack at 200 s (faulthandler) and exits: either way the failure says where (a bare timeout did not).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CREMA_DDP_WORKER": "1", "CREMA_DIST_TIMEOUT_S": "120"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           __file__, str(tmp_path / "ddp"), demo_store]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == 0, out[-6000:]
    ddp = [json.loads(r)["loss"] for r in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    meta = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert meta["world_size"] == 2  # really two processes, each with 3 of the 6 ECGs
    assert single[-1] < single[0]
    assert ddp == pytest.approx(single, rel=1e-5)
    # Rank 0 alone wrote the files: one checkpoint, one metrics row per step.
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == [
        "step_0000006.pt", "step_0000006.pt.sha256"]  # one checkpoint, with its checksum
    assert (tmp_path / "ddp" / "reconstruction.png").stat().st_size > 10_000


if __name__ == "__main__" and os.environ.get("CREMA_DDP_WORKER"):
    import faulthandler

    import torch.distributed as dist

    from crema_fast.train.engine import setup_distributed

    faulthandler.dump_traceback_later(200, exit=True)
    rank, world, _ = setup_distributed()
    _run(_cfg("train.plots=true"), sys.argv[1], sys.argv[2], world, [rank])  # plots: a collective forward
    assert not dist.is_initialized()
