"""Time every attention kernel under a wide set of block sizes, warps and stages at the benchmark's shapes
(GPU only), to choose the autotuning sets in kernels/_attention_configs.py.

Run: ``python tools/attn_sweep.py [--deep] [--kernels fwd,dkdv,dq] [N ...]`` (default N = 120 384 512 1024
2048 4096; d = 64 and 128; bf16, B*H*N*d constant as in benchmarks/bench_attention.py), or
``python tools/attn_sweep.py --overhead``. For each shape it runs the op once (autotuning as
usual), captures each kernel's launch, then relaunches that kernel alone under each config with
``triton.testing.do_bench`` (median ms). Printed per config: ms and TFLOP/s, counting the kernel's own
matmuls (forward 2 = 4*B*H*N^2*d FLOPs; dK/dV 4 matmuls = 8*B*H*N^2*d; dQ 3 = 6*B*H*N^2*d), then per shape the
best config of each kernel, the autotuner's choice, and the backward they give (2.5 x forward FLOPs over
the sum of the best dK/dV, dQ and delta times). ``--deep`` times fewer block shapes (the best of the wide
sweep) at more pipeline depths (2-5 stages); ``--overhead`` times the whole op at N = 120 on the host,
with do_bench and as a CUDA-graph replay, beside SDPA's cuDNN and flash backends. A config that does not
fit (shared memory, registers) prints its error and is skipped.
"""

from __future__ import annotations

import itertools
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.testing  # noqa: E402

from kernels import attention as A  # noqa: E402

KERNELS = {  # name: (module attribute, FLOPs as a multiple of 2*B*H*N^2*d, config space)
    "fwd": ("_attn_fwd", 2, [(bm, bn, w, s) for bm, bn, w, s in itertools.product(
        (64, 128), (64, 128), (4, 8), (2, 3, 4)) if not (bm == 64 and w == 8)]),
    "dkdv": ("_attn_bwd_dkdv", 4, [(bm, bn, w, s) for bm, bn, w, s in itertools.product(
        (32, 64, 128), (64, 128), (4, 8), (2, 3)) if not (bm == 128 and bn == 128 and w == 4)]),
    "dq": ("_attn_bwd_dq", 3, [(bm, bn, w, s) for bm, bn, w, s in itertools.product(
        (64, 128), (32, 64, 128), (4, 8), (2, 3)) if not (bm == 128 and bn == 128 and w == 4)]),
}


DEEP = {  # the best block shapes of the wide sweep (H100, 2026-11-25), at more pipeline depths
    "fwd": [(64, 64, 4, s) for s in (2, 3, 4, 5)] + [(128, 64, 8, s) for s in (3, 4, 5)]
    + [(128, 64, 4, s) for s in (3, 4)],
    "dkdv": [(32, 128, 4, s) for s in (3, 4, 5)] + [(128, 64, 4, s) for s in (2, 3)]
    + [(64, 64, 4, s) for s in (2, 3, 4)] + [(32, 64, 4, s) for s in (3, 4, 5)] + [(64, 128, 8, s) for s in (2, 3)],
    "dq": [(128, 64, 8, s) for s in (3, 4)] + [(128, 32, 4, s) for s in (3, 4, 5)] + [(64, 64, 4, s) for s in (2, 3, 4)]
    + [(64, 32, 4, s) for s in (3, 4)],
}


class Capture:
    """Stands in for an autotuned kernel in kernels.attention: launches it as usual and keeps the call."""

    def __init__(self, tuner):
        self.tuner, self.calls = tuner, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args, kwargs))
            return self.tuner[grid](*args, **kwargs)
        return launch


def _inputs(N, d, dtype):
    """The benchmark's shape for (N, d): B = 16384 / N, H = 2048 / d. Returns B, H, q, k, v (requiring
    grad) and dO, random on the GPU."""
    B, H = max(1, 16384 // N), 2048 // d
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(B, H, N, d, generator=g, device="cuda", dtype=dtype) for _ in range(4))
    return B, H, q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), do


def sweep_shape(N, d, deep=False, only=tuple(KERNELS), dtype=torch.bfloat16):
    B, H, q, k, v, do = _inputs(N, d, dtype)
    print(f"\n== N={N} d={d} B={B} H={H}", flush=True)
    caps = {name: Capture(getattr(A, attr)) for name, (attr, _, _) in KERNELS.items()}
    for name, (attr, _, _) in KERNELS.items():
        setattr(A, attr, caps[name])
    one_pass, A._fused = A._fused, lambda n, dtype: False  # capture the three-kernel backward at every N
    try:
        A.attention(q, k, v).backward(do)
    finally:
        A._fused = one_pass
        for name, (attr, _, _) in KERNELS.items():
            setattr(A, attr, caps[name].tuner)
    scale = d ** -0.5
    with torch.no_grad():
        o, lse = A._forward(q, k, v, None, scale)
    bwd_ms = triton.testing.do_bench(lambda: A._backward(do, q, k, v, o, lse, None, scale), warmup=5, rep=25)
    if A._fused(N, dtype):  # the one-pass backward against the three kernels, both autotuned
        split_ms = triton.testing.do_bench(lambda: A._backward(do, q, k, v, o, lse, None, scale, fused=False),
                                           warmup=5, rep=25)
        print(f"  backward: one pass {bwd_ms:.4f} ms, three kernels {split_ms:.4f} ms", flush=True)
    unit = 2.0 * B * H * N * N * d
    best = {}
    delta = torch.empty_like(lse)
    delta_ms = triton.testing.do_bench(lambda: A._attn_bwd_delta[(triton.cdiv(N, 64), B, H)](
        o, do, delta, *o.stride(), *do.stride(), H, N, HEAD_DIM=d, BLOCK_M=64), warmup=5, rep=25)
    print(f"  delta: {delta_ms:.4f} ms, {4 * B * H * N * d / delta_ms / 1e6:.0f} GB/s (reads o and dO)")
    for name, (attr, mult, space) in KERNELS.items():
        if name not in only:
            continue
        space = DEEP[name] if deep else space
        grid, args, kwargs = caps[name].calls[0]
        tuner = caps[name].tuner
        chosen = getattr(tuner, "best_config", None)
        res = []
        for bm, bn, w, s in space:
            meta = {"BLOCK_M": bm, "BLOCK_N": bn}
            try:
                fn = lambda: tuner.fn[grid(meta)](*args, **kwargs, **meta, num_warps=w, num_stages=s)  # noqa: E731
                ms = triton.testing.do_bench(fn, warmup=5, rep=25)
            except Exception as err:  # noqa: BLE001 (out of resources and the like: report and go on)
                print(f"  {name} {bm}x{bn} w{w} s{s}: {type(err).__name__}: {str(err).splitlines()[0][:80]}")
                continue
            res.append((ms, (bm, bn, w, s)))
            print(f"  {name} {bm}x{bn} w{w} s{s}: {ms:.4f} ms {mult * unit / ms / 1e9:.1f} TFLOP/s", flush=True)
        res.sort()
        best[name] = res[0]
        print(f"  -> {name} best {res[0][1]} {res[0][0]:.4f} ms {mult * unit / res[0][0] / 1e9:.1f} TFLOP/s; "
              f"autotuner chose {chosen}")
    if set(best) != set(KERNELS):  # the summary line needs all three
        return best
    bwd = best["dkdv"][0] + best["dq"][0]
    print(f"  -> fwd {2 * unit / best['fwd'][0] / 1e9:.1f} TFLOP/s; bwd (best dkdv + dq, without delta) "
          f"{5 * unit / bwd / 1e9:.1f} TFLOP/s; the autotuned backward (delta included) {bwd_ms:.4f} ms = "
          f"{5 * unit / bwd_ms / 1e9:.1f} TFLOP/s")
    return best


def overhead(N=120, d=64, dtype=torch.bfloat16):
    """Where short sequences lose time: per impl and pass, the host's time per call (no sync, 50 calls),
    the GPU time through do_bench (what the benchmark reports), and the time of a CUDA-graph replay of the
    same call (GPU work alone, without launch gaps)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import time

    B, H, q, k, v, do = _inputs(N, d, dtype)

    def cudnn(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def flash(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    print(f"\n== overhead at N={N} d={d} B={B} H={H}: host us/call, do_bench ms, graph replay ms")
    for name, fn in (("triton", A.attention), ("sdpa_cudnn", cudnn), ("sdpa_flash", flash)):
        for pss in ("fwd", "fwd+bwd"):
            def call():
                for t in (q, k, v):
                    t.grad = None
                if pss == "fwd":
                    with torch.no_grad():
                        fn(q, k, v)
                else:
                    fn(q, k, v).backward(do)
            for _ in range(3):
                call()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(50):
                call()
            host_us = (time.perf_counter() - t0) / 50 * 1e6
            torch.cuda.synchronize()
            ms = triton.testing.do_bench(call, warmup=25, rep=100)
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    call()
                torch.cuda.current_stream().wait_stream(s)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    call()
                graph_ms = f"{triton.testing.do_bench(graph.replay, warmup=25, rep=100):.4f}"
            except Exception as err:  # noqa: BLE001 (a capture that fails is reported, not fatal)
                graph_ms = f"capture failed: {type(err).__name__}: {str(err).splitlines()[0][:60]}"
            print(f"  {name:10s} {pss:8s} host {host_us:7.1f} us  do_bench {ms:.4f} ms  graph {graph_ms}", flush=True)


def main(argv):
    if "--overhead" in argv:
        for d in (64, 128):
            overhead(d=d)
        return
    deep = "--deep" in argv
    only = tuple(KERNELS)
    if "--kernels" in argv:
        i = argv.index("--kernels")
        only, argv = tuple(argv[i + 1].split(",")), argv[:i] + argv[i + 2:]
    ns = [int(a) for a in argv if a != "--deep"] or [120, 384, 512, 1024, 2048, 4096]
    summary = []
    for N in ns:
        for d in (64, 128):
            best = sweep_shape(N, d, deep, only)
            summary.append((N, d, {k: (round(v[0], 4), v[1]) for k, v in best.items()}))
    print("\n== best configs (ms, (BLOCK_M, BLOCK_N, warps, stages))")
    for N, d, b in summary:
        print(f"N={N:5d} d={d:3d} {b}")


if __name__ == "__main__":
    main(sys.argv[1:])
