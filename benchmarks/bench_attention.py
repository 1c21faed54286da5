"""Flash attention (kernels/attention.py): forward, backward and forward+backward, bf16, non-causal.

Run: ``pytest benchmarks/bench_attention.py --benchmark-only -s``.

GPU (the figures that matter): every N in (108, 120, 384, 512, 1024, 2048, 4096) x d in (64, 128), with
H = 2048 / d and B = 16384 / N (at least 1), so B*H*N*d is constant (the flash-attention benchmarks' habit;
about constant work per token). Each shape times, in one run, with ``triton.testing.do_bench`` (CUDA
events, L2 flushed between runs): our Triton kernel, the plain-PyTorch reference (``attention_ref``) and
``scaled_dot_product_attention`` pinned to each backend present (flash, efficient, cuDNN). Rows carry the
median and spread in ms, TFLOP/s, percent of the device's bf16 peak (``harness.peak``), and the speed-up
of the Triton kernel over the reference and over each SDPA backend (their time / ours, > 1 = we are faster).

FLOPs, non-causal: forward = 4 * B * H * N^2 * d (two N x N x d matmuls, 2 FLOPs per multiply-add);
backward = 2.5 x forward (five matmuls against two: S recomputed, dV, dP, dQ, dK; the FA2 convention; our
split backward actually runs seven, S and dP being recomputed once per kernel); forward+backward = 3.5 x forward.
Roofline (issue 5's bar for the short sequences): min(bf16 peak, bandwidth * N / 2) TFLOP/s, the forward
reading q, k, v and writing o once in bf16 (8*N*d bytes for 4*N^2*d FLOPs: N/2 FLOP per byte); rows carry
it and the percent of it reached.

CPU (no GPU here): the Triton kernel only runs in Triton's interpreter, which says nothing about speed, so
only the reference and SDPA run, at small shapes in fp32 on one thread (harness.time_call), and the rows
say that the Triton figures need a GPU (run tools/gpu_lane.sh there). Quick mode (CREMA_BENCH_QUICK=1): on a
GPU N in (512, 2048) at d = 64; on the CPU B = 1, N in (120, 384) at d = 64, 5 repeats.
Rows go to benchmarks/results/attention.jsonl.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from harness import device_name, peak, print_table, quick, record, summarize, time_call
from kernels.attention import attention, attention_ref

QUICK = quick()
GPU_N = (512, 2048) if QUICK else (108, 120, 384, 512, 1024, 2048, 4096)
GPU_D = (64,) if QUICK else (64, 128)
CPU_SHAPES = [(1, 4, n, 64) for n in (120, 384)] if QUICK else [(2, 4, n, d) for n in (108, 120, 384) for d in (64, 128)]
CPU_REPEAT = 5 if QUICK else 11
COLUMNS = ["N", "d", "B", "H", "impl", "pass", "ms", "ms_iqr", "tflops", "pct_peak", "pct_roofline", "x_vs_ref",
           "x_vs_sdpa_flash", "x_vs_sdpa_efficient", "x_vs_sdpa_cudnn"]


def fwd_flops(B, H, N, d):
    return 4.0 * B * H * N * N * d  # forward: QK^T and PV, 2 * N^2 * d multiply-adds per head


PASS_FLOPS = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # multiples of the forward's FLOPs


def _sdpa_backends():
    """(name, context factory) of each SDPA backend this torch build knows, plus the reference."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    out = []
    for name, member in (("sdpa_flash", "FLASH_ATTENTION"), ("sdpa_efficient", "EFFICIENT_ATTENTION"),
                         ("sdpa_cudnn", "CUDNN_ATTENTION")):
        if hasattr(SDPBackend, member):
            out.append((name, lambda m=member: sdpa_kernel(getattr(SDPBackend, m))))
    return out


def _sdpa(q, k, v):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def _passes(fn, q, k, v, do):
    """Closures running the forward, the backward (of one retained graph) and both."""
    def fwd():
        with torch.no_grad():
            fn(q, k, v)

    o = fn(q, k, v)

    def bwd():
        o.backward(do, retain_graph=True)

    def both():
        fn(q, k, v).backward(do)

    return {"fwd": fwd, "bwd": bwd, "fwd+bwd": both}


def _time_impl(fn, ctx, q, k, v, do, timer):
    """{pass: list of seconds} for one implementation, or None where the backend refuses the shape."""
    try:
        with ctx():
            passes = _passes(fn, q, k, v, do)
            return {p: timer(f, (q, k, v)) for p, f in passes.items()}
    except RuntimeError as err:  # e.g. an SDPA backend without a kernel for this shape or device
        print(f"  skipped: {str(err).splitlines()[0][:100]}")
        return None
    finally:
        for t in (q, k, v):
            t.grad = None


def _gpu_timer(f, grads):
    import triton.testing

    try:
        ms = triton.testing.do_bench(f, warmup=25, rep=100, grad_to_none=list(grads), return_mode="all")
    except (TypeError, ValueError):  # a Triton without return_mode="all": the 10/25/50/75/90th percentiles
        ms = triton.testing.do_bench(f, warmup=25, rep=100, grad_to_none=list(grads),
                                     quantiles=[0.1, 0.25, 0.5, 0.75, 0.9])
    return [m / 1e3 for m in ms]


def _cpu_timer(f, grads):
    def call():
        for t in grads:
            t.grad = None
        f()

    return time_call(call, repeat=CPU_REPEAT, warmup=1 if QUICK else 2)


def _rows(shape, dtype, impls, timings):
    """One row per (impl, pass) with TFLOP/s, % of peak and speed-ups against the others."""
    B, H, N, d = shape
    pk = peak("bf16") if dtype == torch.bfloat16 else None
    bw = peak("GB/s")
    roof = min(pk, bw / 1e3 * N / 2) if pk and bw else None  # TFLOP/s
    rows = []
    for impl in impls:
        if timings.get(impl) is None:
            continue
        for p, secs in timings[impl].items():
            s = summarize(secs)
            tflops = fwd_flops(B, H, N, d) * PASS_FLOPS[p] / s["median"] / 1e12
            row = {"N": N, "d": d, "B": B, "H": H, "dtype": str(dtype).removeprefix("torch."), "impl": impl,
                   "pass": p, "ms": s["median"] * 1e3, "ms_min": s["min"] * 1e3, "ms_max": s["max"] * 1e3,
                   "ms_iqr": s["iqr"] * 1e3, "n": s["n"], "tflops": tflops,
                   "pct_peak": 100 * tflops / pk if pk else None, "roofline_tflops": roof,
                   "pct_roofline": 100 * tflops / roof if roof else None}
            for other in impls:
                if other != impl and timings.get(other) is not None:
                    row[f"x_vs_{other}"] = summarize(timings[other][p])["median"] / s["median"]
            rows.append(row)
    return rows


def _warm_gpu(seconds=2.0):
    """Run bf16 matrix products for a while first: an idle H100 reads 345 MHz, and without this the first
    shape's timings (N = 108) were the noisiest of the run (forward: median 0.21 ms, IQR 0.12 ms)."""
    import time

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a @ a
        torch.cuda.synchronize()


def _sweep(shapes, dtype, device, impls, timer):
    if device == "cuda":
        _warm_gpu()
    rows = []
    for shape in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(shape, generator=g, device=device, dtype=dtype).requires_grad_() for _ in range(3))
        do = torch.randn(shape, generator=g, device=device, dtype=dtype)
        timings = {}
        for name, fn, ctx in impls:
            print(f"  {name} {shape} ...", flush=True)
            timings[name] = _time_impl(fn, ctx, q, k, v, do, timer)
        rows += _rows(shape, dtype, [n for n, _, _ in impls], timings)
        del q, k, v, do
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton figures need a GPU")
def test_attention_gpu(benchmark):
    shapes = [(max(1, 16384 // n), 2048 // d, n, d) for n in GPU_N for d in GPU_D]
    impls = [("triton", attention, contextlib.nullcontext), ("ref", attention_ref, contextlib.nullcontext)]
    impls += [(name, _sdpa, ctx) for name, ctx in _sdpa_backends()]
    rows = benchmark.pedantic(_sweep, args=(shapes, torch.bfloat16, "cuda", impls, _gpu_timer),
                              rounds=1, iterations=1)
    print_table(f"attention, bf16, {device_name()}", rows, COLUMNS)
    record("attention", rows)
    from plot_attention import main as plot_main

    plot_main([])  # attention_<device>_<commit>.png beside the rows
    assert rows


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU lane; on a GPU test_attention_gpu runs")
def test_attention_cpu(benchmark):
    impls = [("ref", attention_ref, contextlib.nullcontext), ("sdpa", _sdpa, contextlib.nullcontext)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per-core figures: steadier on a shared machine
    try:
        rows = benchmark.pedantic(_sweep, args=(CPU_SHAPES, torch.float32, "cpu", impls, _cpu_timer),
                                  rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    note = "triton: needs a GPU (tools/gpu_lane.sh); the interpreter's times say nothing about speed"
    for r in rows:
        r["note"] = note
        r["threads"] = 1
    print_table(f"attention, fp32, {device_name()} (reference and SDPA only)", rows,
                ["N", "d", "B", "H", "impl", "pass", "ms", "ms_iqr", "tflops", "x_vs_ref", "x_vs_sdpa"])
    print(f"\n{note}")
    record("attention", rows)
    assert rows
