"""The fused CR-MAE loss (kernels/crmae_loss.py): forward+backward time, peak memory, MSE bandwidth.

Run: ``pytest benchmarks/bench_crmae_loss.py --benchmark-only -s`` (``tools/gpu_lane.sh`` runs the GPU one).

GPU (the figures that matter), bf16 pred and z as under autocast, timed with ``triton.testing.do_bench``
(CUDA events), in one run:
- ``base``: the base pretraining shapes, B = 256 per GPU, 12 leads x 30 patches x 75 samples, E = 256;
  the Triton loss (``crmae_loss``), the eager reference (``crmae_loss_ref``) and the reference under
  ``torch.compile`` (the strongest peer we have: PyTorch fusing the same graph itself).
- ``mse``: the MSE part alone at the base shapes (Triton: its one forward kernel, which also writes pred's
  gradient; reference: normalize + masked MSE forward and backward), as effective GB/s. Bytes: an unfused
  minimum reads pred and the raw patches once and writes pred's gradient once,
      bytes = R*S*(e_patch + 2*e_pred + 2*e_pred) + 2*R*4 (mask) + B*L (lead mask),  R = B*L*P,
  with e_* the element sizes; the percent of the device's memory bandwidth (harness.PEAKS) beside it.
  Target (issue 11): >= 2.5 TB/s effective on an H100/H200.
- ``large``: a contrastive batch of 2N = 65,536 (B = 32,768, E = 256; P = 2 so that the MSE is small),
  where the reference's (2N)^2 fp32 logits alone are 16 GiB: a reference that runs out of memory is
  recorded as "oom", not as a failure.
Peak memory: ``torch.cuda.max_memory_allocated`` during one forward+backward minus what was allocated
before it (the inputs), in MiB. Ratios: their time / ours (> 1 = the Triton loss is faster) and their
peak memory / ours. Targets: >= 3x the eager reference, >= 2x less peak memory, the large batch runs.

CPU (no GPU here): the Triton loss only runs in Triton's interpreter, which says nothing about speed, so
only the reference runs (fp32, one thread, B = 32 at the base patch shapes), and the rows say that the
Triton figures need a GPU. Quick mode (CREMA_BENCH_QUICK=1): B = 8 and 3 repeats on the CPU; on a GPU
the base and MSE cases only. Rows go to benchmarks/results/crmae_loss.jsonl.
"""

from __future__ import annotations

import pytest
import torch

from harness import device_name, peak, print_table, quick, record, summarize, time_call
from kernels.crmae_loss import crmae_loss, crmae_loss_ref, masked_mse, normalize_patches

L, P, S, E = 12, 30, 75, 256
QUICK = quick()
CPU_B = 8 if QUICK else 32
COLUMNS = ["case", "impl", "B", "ms", "ms_iqr", "peak_MiB", "GB/s", "pct_bw", "x_vs_ref", "x_vs_compiled",
           "mem_x_vs_ref"]


def make_inputs(b, p, device, dtype, seed=0):
    """pred (2, b, L, p, S) and z0, z1 (b, E) in dtype (leaves), patches fp32, masks at ratio 0.75."""
    g = torch.Generator(device=device).manual_seed(seed)
    pred = torch.randn(2, b, L, p, S, generator=g, device=device).to(dtype).requires_grad_()
    patches = torch.randn(b, L, p, S, generator=g, device=device).cumsum(-1)
    mask = (torch.rand(2, b, L, p, generator=g, device=device) < 0.75).float()
    lead_mask = torch.ones(b, L, dtype=torch.bool, device=device)
    z0, z1 = (torch.randn(b, E, generator=g, device=device).to(dtype).requires_grad_() for _ in range(2))
    return pred, patches, mask, lead_mask, z0, z1


def mse_bytes(b, p, e_pred, e_patch=4):
    """Effective bytes of the MSE part (see the module docstring)."""
    r = b * L * p
    return r * S * (e_patch + 4 * e_pred) + 2 * r * 4 + b * L


def _loss_step(fn, inputs):
    pred, patches, mask, lead_mask, z0, z1 = inputs

    def step():
        for t in (pred, z0, z1):
            t.grad = None
        fn(pred, patches, mask, lead_mask, z0, z1, 0.1, 0.2).loss.backward()

    return step


def _mse_step(impl, inputs):
    pred, patches, mask, lead_mask, _, _ = inputs
    if impl == "triton":
        from kernels.crmae_loss import _MaskedMSE

        def step():  # the forward writes pred's gradient; the backward is one multiply, not counted
            with torch.enable_grad():
                _MaskedMSE.apply(pred, patches, mask, lead_mask, 1e-6, True)
    else:
        def step():
            pred.grad = None
            masked_mse(pred, normalize_patches(patches), mask, lead_mask).backward()
    return step


def _gpu_time(step):
    import triton.testing

    ms = triton.testing.do_bench(step, warmup=10, rep=60, return_mode="all")
    return [m / 1e3 for m in ms]


def _peak_mib(step):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _run_case(case, b, p, impls, timer, device, dtype, peak_mem):
    inputs = make_inputs(b, p, device, dtype)
    rows, times = [], {}
    for impl, fn in impls:
        print(f"  {case} {impl} B={b} ...", flush=True)
        try:
            step = _mse_step(impl, inputs) if case == "mse" else _loss_step(fn, inputs)
            secs = timer(step)
            mem = peak_mem(step) if peak_mem else None
        except torch.OutOfMemoryError:
            rows.append({"case": case, "impl": impl, "B": b, "status": "oom"})
            torch.cuda.empty_cache()
            continue
        times[impl] = (summarize(secs), mem)
        s = times[impl][0]
        row = {"case": case, "impl": impl, "B": b, "P": p, "S": S, "E": E, "dtype": str(dtype).removeprefix("torch."),
               "status": "ok", "ms": s["median"] * 1e3, "ms_min": s["min"] * 1e3, "ms_max": s["max"] * 1e3,
               "ms_iqr": s["iqr"] * 1e3, "n": s["n"], "peak_MiB": mem}
        if case == "mse":
            gbps = mse_bytes(b, p, torch.finfo(dtype).bits // 8) / s["median"] / 1e9
            bw = peak("GB/s")
            row.update({"GB/s": gbps, "pct_bw": 100 * gbps / bw if bw else None})
        rows.append(row)
    for row in rows:
        mine = times.get(row["impl"])
        for other, key in (("ref", "x_vs_ref"), ("compiled", "x_vs_compiled")):
            if mine and other in times and other != row["impl"]:
                row[key] = times[other][0]["median"] / mine[0]["median"]
                if other == "ref" and mine[1] and times[other][1]:
                    row["mem_x_vs_ref"] = times[other][1] / mine[1]
    return rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton figures need a GPU")
def test_crmae_loss_gpu(benchmark):
    compiled = torch.compile(crmae_loss_ref)
    impls = [("triton", crmae_loss), ("ref", crmae_loss_ref), ("compiled", compiled)]

    def sweep():
        rows = _run_case("base", 256, P, impls, _gpu_time, "cuda", torch.bfloat16, _peak_mib)
        rows += _run_case("mse", 256, P, impls[:2], _gpu_time, "cuda", torch.bfloat16, _peak_mib)
        if not QUICK:
            rows += _run_case("large", 32768, 2, impls[:2], _gpu_time, "cuda", torch.bfloat16, _peak_mib)
        return rows

    rows = benchmark.pedantic(sweep, rounds=1, iterations=1)
    print_table(f"CR-MAE loss, bf16, {device_name()}", rows, COLUMNS + ["status"])
    record("crmae_loss", rows)
    assert any(r["impl"] == "triton" and r["status"] == "ok" for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU lane; on a GPU test_crmae_loss_gpu runs")
def test_crmae_loss_cpu(benchmark):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core figures: steadier on a shared machine

    def timer(step):
        return time_call(step, repeat=3 if QUICK else 7, warmup=1)

    try:
        rows = benchmark.pedantic(lambda: _run_case("base", CPU_B, P, [("ref", crmae_loss_ref)], timer, "cpu",
                                                    torch.float32, None)
                                  + _run_case("mse", CPU_B, P, [("ref", None)], timer, "cpu", torch.float32, None),
                                  rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    note = "triton: needs a GPU (tools/gpu_lane.sh); the interpreter's times say nothing about speed"
    for r in rows:
        r.update(note=note, threads=1)
    print_table(f"CR-MAE loss, fp32, {device_name()} (reference only)", rows, COLUMNS)
    print(f"\n{note}")
    record("crmae_loss", rows)
    assert all(r["status"] == "ok" and r["ms"] > 0 for r in rows)
