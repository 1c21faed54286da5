"""Embedding throughput (ECG/s): the frozen encoder over a store, for ref / sdpa / triton attention.

Run: ``pytest benchmarks/bench_eval.py --benchmark-only -s``.

Two figures per attention implementation, from one run:
  encode   ``CremaModel.encode`` alone (all 30 patches of 12 leads visible: 12 x 32 = 384 tokens, mean
           pool) on a preprocessed batch already on the device: the model's share
  embed    the whole path of ``crema-fast embed`` over every row of the store: ``StoreReader.read``,
           ``crema_fast.data.preprocess`` (resample 500 -> 250 Hz, band-pass, fixed centre crop, z-score),
           the copy to the device and ``encode``, batch after batch
ECG/s is wall-clock (median over repeats, with min/max); on the CPU ``ecg_per_cpu_s`` divides by the CPU
seconds of this process instead (on a shared machine other processes do not skew it). Each row gives
its speed-up over ``ref`` measured in the same run (> 1 = faster). FLOP/s use the encoder's forward
FLOPs from its shapes: depth x [2 N D (4D + 2H) + 4 N^2 D] + 2 L P S D (patch embedding), N = 12 x 32
tokens, H = 4D (``encode_flops`` below).

CPU (here): the tiny preset, batch 64, ref and sdpa, fp32; triton needs a GPU (CUDA) and is reported as
skipped. GPU: the base preset, batch 256, ref, sdpa and triton, bf16 autocast.
Store: ``$CREMA_BENCH_STORE`` if set, else the 500 PTB-XL records of ../shared/data converted once into a
temporary folder. Quick mode (CREMA_BENCH_QUICK=1, ``harness.quick``): 2 repeats, and the embed path over
the first 64 rows only, batch 32 on the CPU. Rows go to benchmarks/results/eval.jsonl.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import cpu_seconds, device_name, peak, print_table, quick, record, summarize

from crema_fast.data.preprocess import preprocess
from crema_fast.model import CremaModel
from crema_fast.train.config import build_config

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ptbxl" / "records500"
QUICK = quick()
REPEAT = 2 if QUICK else 5
EMBED_ROWS = 64 if QUICK else None  # rows the embed path covers (None: every row of the store)
COLUMNS = ["preset", "attention", "batch", "encode_ecg_s", "embed_ecg_s", "embed_ecg_per_cpu_s", "encode_tflops",
           "x_vs_ref_encode", "x_vs_ref_embed", "note"]


def _store(tmp: str) -> str:
    if os.environ.get("CREMA_BENCH_STORE"):
        return os.environ["CREMA_BENCH_STORE"]
    from zarr_store.convert import convert

    out = Path(tmp) / "ptbxl500.zarr"
    convert([DATA], out, progress=False)
    return str(out)


def encode_flops(model: CremaModel) -> float:
    """Forward FLOPs of ``encode`` for one ECG (matmuls at 2mnk; norms, softmax, GELU, pool not counted)."""
    c = model.model_cfg
    n, D, H = c.n_leads * (c.n_patches + 2), c.dim, c.mlp_hidden
    return float(c.depth * (2 * n * D * (4 * D + 2 * H) + 4 * n * n * D) + 2 * c.n_leads * c.n_patches * c.patch * D)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _embed_all(model, reader, cfg, batch, device, amp) -> int:
    """The embed path over every row of the store; returns the rows embedded."""
    n = len(reader) if EMBED_ROWS is None else min(len(reader), EMBED_ROWS)
    for k in range(0, n, batch):
        rb = reader.read(np.arange(k, min(n, k + batch)))
        x = preprocess(rb.signals, rb.lead_mask, rb.valid_length, reader.rate, cfg.data, train=False)
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            model.encode(torch.from_numpy(x).to(device), torch.from_numpy(rb.lead_mask).to(device))
    _sync(device)
    return n


def _sweep(preset: str, batch: int, impls: list[str]) -> list[dict]:
    from zarr_store.reader import StoreReader

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = torch.bfloat16 if device.type == "cuda" else None
    cfg = build_config(preset)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reader = StoreReader(_store(tmp))
        rb = reader.read(np.arange(min(batch, len(reader))))
        x = torch.from_numpy(preprocess(rb.signals, rb.lead_mask, rb.valid_length, reader.rate, cfg.data,
                                        train=False)).to(device)
        lm = torch.from_numpy(rb.lead_mask).to(device)
        for impl in impls:
            if impl == "triton" and device.type != "cuda":
                rows.append({"preset": preset, "attention": impl, "batch": batch, "note": "needs a GPU (CUDA)"})
                continue
            torch.manual_seed(0)
            try:
                model = CremaModel(cfg.model, cfg.loss, attention=impl).to(device).eval()
            except Exception as err:  # e.g. the kernel missing on this machine: said, not hidden
                note = str(err).splitlines()[0][:100]
                rows.append({"preset": preset, "attention": impl, "batch": batch, "note": note})
                continue

            def encode():
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    model.encode(x, lm)
                _sync(device)

            for _ in range(2):
                encode()
            enc = []
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                encode()
                enc.append(len(x) / (time.perf_counter() - t0))
            _embed_all(model, reader, cfg, batch, device, amp)  # warm: page cache, Numba, autotuning
            emb, emb_cpu = [], []
            for _ in range(max(2, REPEAT // 2)):
                t0, c0 = time.perf_counter(), cpu_seconds()
                n = _embed_all(model, reader, cfg, batch, device, amp)
                emb.append(n / (time.perf_counter() - t0))
                emb_cpu.append(n / max(cpu_seconds() - c0, 1e-9))
            se, sm = summarize(enc), summarize(emb)
            flops = encode_flops(model)
            rows.append({"preset": preset, "attention": impl, "batch": batch, "store_rows": len(reader),
                         "amp": "bf16" if amp else "fp32", "encode_ecg_s": se["median"], "encode_ecg_s_min": se["min"],
                         "encode_ecg_s_max": se["max"], "embed_ecg_s": sm["median"], "embed_ecg_s_min": sm["min"],
                         "embed_ecg_s_max": sm["max"],
                         "embed_ecg_per_cpu_s": summarize(emb_cpu)["median"] if device.type == "cpu" else None,
                         "gflop_per_ecg": flops / 1e9, "encode_tflops": flops * se["median"] / 1e12,
                         "note": ""})
            pk = peak("bf16")
            rows[-1]["encode_pct_peak"] = 100 * rows[-1]["encode_tflops"] / pk if pk and amp else None
            del model
    ref = next((r for r in rows if r["attention"] == "ref" and "encode_ecg_s" in r), None)
    for r in rows:
        if ref and "encode_ecg_s" in r:
            r["x_vs_ref_encode"] = r["encode_ecg_s"] / ref["encode_ecg_s"]
            r["x_vs_ref_embed"] = r["embed_ecg_s"] / ref["embed_ecg_s"]
    return rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the base-preset figures need a GPU")
def test_embed_gpu(benchmark):
    rows = benchmark.pedantic(_sweep, args=("base", 256, ["ref", "sdpa", "triton"]), rounds=1, iterations=1)
    print_table(f"embedding, base preset, bf16, {device_name()}", rows, COLUMNS)
    record("eval", rows)
    assert any("encode_ecg_s" in r for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU lane; on a GPU test_embed_gpu runs")
def test_embed_cpu(benchmark):
    rows = benchmark.pedantic(_sweep, args=("tiny", 32 if QUICK else 64, ["ref", "sdpa", "triton"]), rounds=1,
                              iterations=1)
    print_table(f"embedding, tiny preset, fp32, {device_name()}", rows, COLUMNS)
    record("eval", rows)
    assert any("encode_ecg_s" in r for r in rows)
