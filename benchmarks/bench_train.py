"""Training throughput: ECG/s of full optimizer steps, split into data, forward, backward and optimizer.

Run: ``pytest benchmarks/bench_train.py --benchmark-only -s``.

Each configuration builds the real ``Trainer`` (model, AdamW, LambdaLR, ECGLoader on a real store) and
times ``STEPS`` steps after ``WARMUP`` steps, one phase at a time (a CUDA synchronize closes each phase on
a GPU, so the split costs a little overlap; the loop in ``engine.py`` has none):
  data       the next batch from the loader (decode, resample, filter, crop, z-score, mask) and its copy
             to the device
  forward    the model and the CR-MAE loss (bf16 autocast on CUDA, fp32 on the CPU)
  backward   loss.backward()
  optimizer  gradient clipping, AdamW step, scheduler step, zero_grad
ECG/s = batch / step time. MFU (GPU only) = 3 x ``model.flops_per_ecg()`` x ECG/s / the device's bf16 peak
(``harness.peak``); the FLOP count is the model's, from its shapes (see ``CremaModel.flops_per_ecg``).
Rows give the median and spread over steps, and each attention's speed-up over ``ref`` measured in the
same run (> 1 = faster).

CPU (here): the tiny preset, batch 32, ``ref`` and ``sdpa`` attention. GPU: the base preset, batch 64,
``ref``, ``sdpa`` and ``triton`` (where the kernel is built), with bf16 autocast.
Store: ``$CREMA_BENCH_STORE`` if set, else ../shared/data/ptbxl/records500 (500 records) converted once into
runs/stores/, else the shipped demo records (15; the batch is cut to fit).
Rows go to benchmarks/results/train.jsonl.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest
import torch

from harness import device_name, peak, print_table, record, summarize

import crema_fast
from crema_fast.train.config import build_config
from crema_fast.train.engine import Trainer

REPO = Path(__file__).resolve().parents[1]
SHARED_PTBXL = REPO.parent / "shared" / "data" / "ptbxl" / "records500"
DEMO_DATA = Path(crema_fast.__file__).resolve().parent / "demo_data"  # the 15 records the package ships
WARMUP, STEPS = 3, 12
COLUMNS = ["preset", "attention", "batch", "ecg_per_s", "ecg_per_s_iqr", "step_ms", "data_ms", "fwd_ms", "bwd_ms",
           "opt_ms", "mfu_pct", "x_vs_ref"]


def _store() -> tuple[str, int]:
    """(store, rows) to train on. A folder of records is converted with zarr_store.convert (benchmarks
    import no command module); a finished conversion is left as it is, so later runs reuse it."""
    from zarr_store.convert import convert
    from zarr_store.reader import StoreReader

    src = os.environ.get("CREMA_BENCH_STORE") or str(SHARED_PTBXL if SHARED_PTBXL.is_dir() else DEMO_DATA)
    if "://" in src or (Path(src) / "zarr.json").is_file():
        store = src
    else:
        store = str(REPO / "runs" / "stores" / f"bench-{Path(src).resolve().name}.zarr")
        convert([src], store, progress=False)
    return store, len(StoreReader(store))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(trainer: Trainer, warmup: int, steps: int) -> dict[str, list[float]]:
    """Seconds per phase for each of ``steps`` optimizer steps (grad_accum = 1), after ``warmup`` steps."""
    dev = trainer.device
    phases: dict[str, list[float]] = {"data": [], "forward": [], "backward": [], "optimizer": [], "step": []}
    clip = trainer.cfg.optim.grad_clip or float("inf")
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        batch = trainer._next_batch().to(dev)
        _sync(dev)
        t1 = time.perf_counter()
        out = trainer._forward(batch)
        _sync(dev)
        t2 = time.perf_counter()
        out.loss.backward()
        _sync(dev)
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), clip)
        trainer.optimizer.step()
        trainer.scheduler.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        _sync(dev)
        t4 = time.perf_counter()
        if i >= warmup:
            for name, a, b in (("data", t0, t1), ("forward", t1, t2), ("backward", t2, t3), ("optimizer", t3, t4),
                               ("step", t0, t4)):
                phases[name].append(b - a)
    return phases


def _sweep(preset: str, batch: int, impls: list[str]) -> list[dict]:
    store, rows_in_store = _store()
    batch = min(batch, rows_in_store)
    pk = peak("bf16")
    rows, timings = [], {}
    for impl in impls:
        cfg = build_config(preset, sets=[f"train.batch_size={batch}", f"train.attention={impl}", "train.plots=false",
                                         "train.steps=1000", "train.workers=0"])
        print(f"  {preset} {impl} batch {batch} ...", flush=True)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                trainer = Trainer(cfg, tmp, store, progress=False)
                timings[impl] = time_steps(trainer, WARMUP, STEPS)
                flops = trainer.flops_per_ecg
                del trainer
        except Exception as err:  # e.g. triton without its kernel: a row-less skip, said out loud
            print(f"  skipped {impl}: {str(err).splitlines()[0][:120]}")
            continue
        ph = timings[impl]
        s = summarize([batch / t for t in ph["step"]])
        row = {"preset": preset, "attention": impl, "batch": batch, "store_rows": rows_in_store,
               "ecg_per_s": s["median"], "ecg_per_s_min": s["min"], "ecg_per_s_max": s["max"],
               "ecg_per_s_iqr": s["iqr"], "n": s["n"],
               "step_ms": summarize(ph["step"])["median"] * 1e3,
               "data_ms": summarize(ph["data"])["median"] * 1e3,
               "fwd_ms": summarize(ph["forward"])["median"] * 1e3,
               "bwd_ms": summarize(ph["backward"])["median"] * 1e3,
               "opt_ms": summarize(ph["optimizer"])["median"] * 1e3,
               "gflop_per_ecg_fwd": flops / 1e9,
               "amp": "bf16" if torch.cuda.is_available() else "fp32"}
        row["mfu_pct"] = 100 * 3 * flops * s["median"] / pk / 1e12 if pk else None
        rows.append(row)
    ref = next((r for r in rows if r["attention"] == "ref"), None)
    for r in rows:
        r["x_vs_ref"] = r["ecg_per_s"] / ref["ecg_per_s"] if ref else None
    return rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the base-preset figures need a GPU")
def test_train_gpu(benchmark):
    rows = benchmark.pedantic(_sweep, args=("base", 64, ["ref", "sdpa", "triton"]), rounds=1, iterations=1)
    print_table(f"training step, base preset, bf16, {device_name()}", rows, COLUMNS)
    record("train", rows)
    assert rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU lane; on a GPU test_train_gpu runs")
def test_train_cpu(benchmark):
    rows = benchmark.pedantic(_sweep, args=("tiny", 32, ["ref", "sdpa"]), rounds=1, iterations=1)
    print_table(f"training step, tiny preset, fp32, {device_name()}", rows, COLUMNS)
    record("train", rows)
    assert rows
