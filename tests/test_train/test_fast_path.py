"""The training step's fast-path options on the CPU lane: no host reads between logging steps, prefetch
(same batches, exact resume), activation checkpointing (same losses and gradients), torch.compile (same
losses over a few steps), and the memory estimate behind ``--dry-run``'s largest batch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from crema_fast.train.engine import Trainer
from tests.test_train.test_engine import _cfg as engine_cfg
from tests.test_train.test_engine import _losses

# Every Tensor method that copies a value to the host (a device sync on a GPU).
HOST_READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")
# The loader fills and copies its host buffers through .numpy() before the batch goes to the device
# (crema_fast/data/loader.py): host memory on both sides, no device sync; those calls are not counted.
DATA_PATH = str(Path(__file__).resolve().parents[2] / "crema_fast" / "data")


def _cfg(*sets, steps=6):
    """test_engine's short run, batch 4, logging every third step."""
    return engine_cfg("train.batch_size=4", "train.log_every=3", *sets, steps=steps)


def test_no_host_reads_between_logging_steps(demo_store, tmp_path, monkeypatch):
    """Counts every host read of a tensor from the start of one step to the start of the next: zero for
    the steps that do not log (1, 2, 4, 5 of 6 with log_every = 3), and some on the logging steps (so the
    counter does see them)."""
    trainer = Trainer(_cfg(), tmp_path / "run", demo_store, progress=False)
    count = {"n": 0}
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            if not sys._getframe(1).f_code.co_filename.startswith(DATA_PATH):
                count["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    marks = []
    step = trainer.train_step

    def marked():
        marks.append(count["n"])
        return step()

    monkeypatch.setattr(trainer, "train_step", marked)
    trainer.fit()
    marks.append(count["n"])
    reads = [b - a for a, b in zip(marks, marks[1:])]  # reads[i]: step i + 1 and the loop after it
    monkeypatch.undo()
    assert len(reads) == 6
    assert [reads[i] for i in (0, 1, 3, 4)] == [0, 0, 0, 0], reads
    assert reads[2] > 0 and reads[5] > 0, reads


def test_prefetch_gives_the_same_batches(demo_store, tmp_path):
    """With and without prefetch: the same losses, bit for bit (prefetch only moves when a batch is read)."""
    a = Trainer(_cfg("train.log_every=1"), tmp_path / "a", demo_store, progress=False)
    b = Trainer(_cfg("train.log_every=1", "train.prefetch=false"), tmp_path / "b", demo_store, progress=False)
    a.fit()
    b.fit()
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(_losses(tmp_path / "a")) == 6
    assert a._ahead is not None and b._ahead is None  # the prefetch did happen in a


def test_activation_checkpointing_same_loss_and_gradients():
    from crema_fast.model import CremaModel, ModelConfig
    from tests.test_model.conftest import make_batch

    cfg = ModelConfig.preset("tiny")
    torch.manual_seed(0)
    model = CremaModel(cfg, attention="sdpa")
    batch = make_batch(cfg, b=3, n_keep=8, seed=1)
    results = []
    for on in (False, True):
        model.sit.checkpoint_blocks = on
        model.zero_grad(set_to_none=True)
        out = model(*batch)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), (l1, g1) = results
    assert torch.equal(l0, l1)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_compiled_model_gives_the_same_losses(demo_store, tmp_path):
    """torch.compile (inductor's C++ backend here) with the fused Triton loss (interpreted; an opaque call
    in the compiled graph) against the eager model with the reference loss, over 3 steps. Tolerance: the
    compiled kernels fuse and reorder float sums (relative 1e-4 on each logged loss)."""
    eager = _cfg("train.log_every=1", steps=3)
    compiled = _cfg("train.log_every=1", "train.compile=true", "train.loss=triton", steps=3)
    Trainer(eager, tmp_path / "a", demo_store, progress=False).fit()
    Trainer(compiled, tmp_path / "b", demo_store, progress=False).fit()
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert len(a) == 3 and a[0] > 0
    assert b == pytest.approx(a, rel=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_gpu_compiled_fast_path_same_losses(demo_store, tmp_path, mode):
    """On CUDA: the whole fast path (triton attention and loss, bf16) eager vs compiled / CUDA graphs."""
    fast = ("train.attention=triton", "train.loss=triton", "train.log_every=1")
    Trainer(_cfg(*fast, steps=4), tmp_path / "a", demo_store, progress=False).fit()
    Trainer(_cfg(*fast, "train.compile=true", f"train.compile_mode={mode}", steps=4), tmp_path / "b", demo_store,
            progress=False).fit()
    assert _losses(tmp_path / "b") == pytest.approx(_losses(tmp_path / "a"), rel=2e-2)  # bf16 autocast
