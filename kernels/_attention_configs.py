"""Autotuning sets and input validation for kernels/attention.py (split out to keep that file readable).

Nothing here is public: ``kernels.attention`` is the op's only entry point (``attention``, ``attention_ref``).
"""

from __future__ import annotations

import inspect
import math
import os

import torch
import triton
import triton.testing

HEAD_DIMS = (32, 64, 128)
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# The kernels move each program's pointers to its (batch, head) slice in int64 but index within a slice in
# int32 (cheaper address maths on every tile): a slice must span fewer elements than this.
SLICE_LIMIT = 2**31


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (triton.knobs exists from Triton 3.4 on)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


# ----------------------------------------------------------------------------------------------------------
# Autotuning: small config sets per kernel; the interpreter keeps one (it cannot time configs).

def _cfg(block_m, block_n, warps, stages):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n}, num_warps=warps, num_stages=stages)


# Each set but the one-pass backward's is the best few of a sweep of every kernel over blocks {32, 64, 128}^2,
# 4 or 8 warps and 2-5 stages at the benchmark's shapes on an H100 (tools/attn_sweep.py, 2026-11-25; bf16,
# N = 120-4096; benchmarks/results/gpu_attn_sweep_*). Entries
# under "d <= 64 only" were slow or did not fit at d = 128, and the reverse. The first entry of each set is
# the interpreter's (64 x 64, the cheapest there).
FWD_CONFIGS = [_cfg(64, 64, 4, 3), _cfg(64, 64, 4, 2), _cfg(128, 64, 8, 3), _cfg(128, 64, 8, 4), _cfg(128, 64, 4, 3)]
FWD_D64_ONLY = {(128, 64, 4, 3)}
FWD_D128_ONLY: set = set()
# dk/dv: a program owns BLOCK_N keys and loops over BLOCK_M queries.
DKDV_CONFIGS = [_cfg(64, 64, 4, 2), _cfg(32, 64, 4, 3), _cfg(128, 64, 4, 2), _cfg(32, 128, 4, 3),
                _cfg(64, 128, 8, 2)]
DKDV_D64_ONLY = {(128, 64, 4, 2), (32, 128, 4, 3)}
DKDV_D128_ONLY = {(64, 128, 8, 2)}
# dq: a program owns BLOCK_M queries and loops over BLOCK_N keys.
DQ_CONFIGS = [_cfg(64, 64, 4, 2), _cfg(128, 64, 8, 3), _cfg(128, 32, 4, 3), _cfg(64, 32, 4, 3)]
DQ_D64_ONLY: set = set()
DQ_D128_ONLY: set = set()
# The one-pass backward for N <= FUSED_MAX_N (the model's encoder: 12 leads x visible patches, ~108-120
# tokens): BLOCK_N covers every key of the head. Not swept (attn_sweep times the three-kernel backward):
# the dK/dV set's shapes plus 8-warp ones, for its extra fp32 tile (dQ's).
# At d = 128 all of them spill some registers (ptxas, sm_90a: 104-1612 bytes, the 4-warp ones most).
FUSED_MAX_N = 128
FUSED_CONFIGS = [_cfg(64, 64, 4, 2), _cfg(32, 64, 4, 3), _cfg(64, 64, 8, 2), _cfg(64, 128, 8, 2),
                 _cfg(32, 128, 8, 3), _cfg(32, 128, 4, 3)]
FUSED_D64_ONLY = {(32, 128, 4, 3)}


def _spec(c):
    return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_warps, c.num_stages)


def pruner(d64_only, d128_only):
    """An early_config_prune for one kernel: the interpreter keeps the first config (64 x 64, the cheapest
    there); a GPU keeps the configs meant for this head dim, drops blocks far larger than N, and for fp32
    inputs (twice the shared memory and registers per element) keeps blocks <= 64 with 2 stages, 1 at
    d = 128: compiled for sm_90, the 2-stage fp32 d = 128 backward needs 256 KiB of shared memory (the H100
    has 227 KiB a block), 1 stage 192 KiB. fp32 is the accuracy path, not a fast one (its dots spill)."""
    def prune(configs, named_args, **kwargs):
        if interpreting():
            return configs[:1]
        head_dim = kwargs.get("HEAD_DIM", named_args.get("HEAD_DIM"))
        skip = d64_only if head_dim > 64 else d128_only
        fit = [c for c in configs if _spec(c) not in skip]
        cap = 64 if named_args["Q"].element_size() == 4 else max(64, triton.next_power_of_2(named_args["N"]))
        fit = [c for c in fit if c.kwargs["BLOCK_M"] <= cap and c.kwargs["BLOCK_N"] <= cap] or fit[:1]
        if named_args["Q"].element_size() == 4:
            max_stages = 1 if head_dim > 64 else 2
            fit = [triton.Config(dict(c.kwargs), num_warps=c.num_warps, num_stages=min(c.num_stages, max_stages))
                   for c in fit]
        return fit

    return prune


def fused_pruner(d64_only, d128_only):
    """The one-pass backward's prune: only blocks of keys that cover N exactly once (64, or 128 past 64),
    then the usual rules (``pruner``)."""
    base = pruner(d64_only, d128_only)

    def prune(configs, named_args, **kwargs):
        need = max(64, triton.next_power_of_2(named_args["N"]))
        return base([c for c in configs if c.kwargs["BLOCK_N"] == need], named_args, **kwargs)

    return prune


def _bench(kernel_call, quantiles):
    """Autotuning timer: shorter than Triton's default (25 ms warm-up, 100 ms runs). On the H100 the default
    lengths (tried at 2a9b4bf) did not steady the benchmark: the forward at N = 1024, d = 64 read 404 and 372
    TFLOP/s in two runs with this timer and 349 in one with the default; the best configs there are within
    3% of each other (tools/attn_sweep.py)."""
    return triton.testing.do_bench(kernel_call, warmup=10, rep=40, quantiles=quantiles)


TUNE_KEY = ["N_KEY", "HEAD_DIM", "HAS_MASK"]  # the autotuner adds the tensors' dtypes itself
# The short timer where this Triton's autotune takes one. No on-disk cache of tuning results: the key
# has no B*H, so a result tuned at the tests' small batches must not be reused by a benchmark or a run.
TUNE_EXTRA = {k: v for k, v in (("do_bench", _bench),)
              if k in inspect.signature(triton.autotune).parameters}


# ----------------------------------------------------------------------------------------------------------
# Input validation

def check_inputs(q, k, v, key_padding_mask, scale, *, interpret: bool) -> float:
    """Validate ``attention``'s arguments (see its contract); return the softmax scale as a float.

    interpret: whether the kernels run in Triton's interpreter (CPU tensors are accepted only then)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-d tensor (B, H, N, d), got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
            raise TypeError(f"{name}.dtype: expected one of float16, bfloat16, float32, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            raise ValueError(f"{name}.shape: expected q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{name}.dtype: expected q's dtype {q.dtype}, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}.device: expected q's device {q.device}, got {t.device}")
    B, H, N, D = q.shape
    if D not in HEAD_DIMS:
        raise ValueError(f"q.shape[-1] (head dim): expected one of {HEAD_DIMS}, got {D}")
    if min(B, H, N) < 1:
        raise ValueError(f"q.shape: expected B, H, N >= 1, got {tuple(q.shape)}")
    if max(B, H) > 65535:  # B and H are grid axes 1 and 2, which CUDA caps at 65535
        raise ValueError(f"q.shape: expected B, H <= 65535, got {tuple(q.shape)}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        # max with N * D: the outputs and gradients are contiguous slices of N * D elements
        span = max(N * D, (N - 1) * t.stride(2) + (D - 1) * t.stride(3) + 1)
        if span >= SLICE_LIMIT:
            raise ValueError(f"{name}: expected each (batch, head) slice to span < 2**31 elements (N * stride(2) "
                             f"+ d * stride(3)), got {span} for shape {tuple(t.shape)}, strides {t.stride()}")
    if q.device.type != "cuda" and not interpret:
        raise ValueError(f"q.device: expected a CUDA tensor (or TRITON_INTERPRET=1 set before import for CPU "
                         f"tensors), got {q.device}")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor):
            raise TypeError(f"key_padding_mask: expected a bool tensor or None, got {type(key_padding_mask).__name__}")
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"key_padding_mask.dtype: expected torch.bool, got {key_padding_mask.dtype}")
        if tuple(key_padding_mask.shape) != (B, N):
            raise ValueError(f"key_padding_mask.shape: expected (B, N) = {(B, N)}, got "
                             f"{tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != q.device:
            raise ValueError(f"key_padding_mask.device: expected q's device {q.device}, got {key_padding_mask.device}")
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a float or None, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale: expected a finite positive number, got {scale}")
    return float(scale)
