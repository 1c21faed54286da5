"""Flash attention (non-causal), forward and backward, in Triton, beside its plain-PyTorch reference.

Contract
--------
``attention(q, k, v, key_padding_mask=None, scale=None) -> o``

- ``q``, ``k``, ``v``: (B, H, N, d) tensors of one dtype (float16, bfloat16 or float32) on one device,
  any strides. d (head dim) in {32, 64, 128}; any N >= 1 (ragged edges are masked loads, there is no
  multiple-of-block rule); 1 <= B, H <= 65535 (grid axes). Tensors may exceed 2**31 elements (the
  per-(batch, head) offsets are int64); one (batch, head) slice must span fewer (ValueError otherwise).
- ``key_padding_mask``: optional bool (B, N), True = keep the key. A query row whose keys are all masked
  gets an output of zeros and zero gradients (the reference does the same, without NaN).
- ``scale``: softmax scale, a positive float; default 1 / sqrt(d).
- Returns ``o`` (B, H, N, d) in the input dtype, contiguous; differentiable in q, k and v.

Numerics: statistics (running max, sum, log-sum-exp, delta) and accumulators are fp32 whatever the input
dtype; the dots take fp16/bf16 operands on the GPU (tensor cores) and, for fp32 inputs, run as 3xTF32
(about fp32 accuracy, on tensor cores) on the GPU and as IEEE fp32 in the interpreter. The forward saves
only the base-2 log-sum-exp per row; the backward recomputes the probabilities from it (no N x N matrix
is ever written to memory).

Kernels: ``_attn_fwd`` (online softmax over key blocks), ``_attn_bwd_delta`` (delta = rowsum(dO * O)),
``_attn_bwd_dkdv`` (one program per key block, looping over query blocks) and ``_attn_bwd_dq`` (one
program per query block, looping over key blocks); for N <= FUSED_MAX_N (128; 64 in fp32) the backward is
one pass instead, ``_attn_bwd_fused`` (the dK/dV kernel with FUSED: one program per head, delta and dQ
included). Grids are (blocks, B, H), consecutive programs sharing a head's K and V in L2. Block sizes and
warps are autotuned per device over small sets, keyed on (N rounded up to a power of two, d, mask or not,
dtype), chosen from H100 sweeps (tools/attn_sweep.py). At d = 128 several kept configs spill registers
(ptxas, sm_90a: 104-1612 bytes); some of those were still the fastest in the sweeps, and the autotuner
picks by time. tests/test_kernels compiles some configs for Hopper on every run (wgmma, shared memory).
The sets, their pruning and the input validation live in kernels/_attention_configs.py.

CPU: under ``TRITON_INTERPRET=1`` the same kernels run in Triton's interpreter (tests, small shapes).
The interpreter's bf16 arithmetic is wrong (shared/notes/triton-on-cpu.md), so there bf16 tensors are
upcast to fp32 right after each load (the ``UPCAST`` constexpr) and no bf16 arithmetic is done; on the
GPU ``UPCAST`` is off and bf16 dots run natively. The interpreter cannot benchmark autotune configs, so
there the configs are pruned to one (64 x 64 blocks, the cheapest there). Without the interpreter, CPU
tensors are rejected: the model's ``ref`` and ``sdpa`` paths are the CPU fallback.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels._attention_configs import (  # noqa: F401 (HEAD_DIMS, DTYPES: part of the op's description)
    DKDV_CONFIGS, DKDV_D64_ONLY, DKDV_D128_ONLY, DQ_CONFIGS, DQ_D64_ONLY, DQ_D128_ONLY, DTYPES, FUSED_CONFIGS,
    FUSED_D64_ONLY, FUSED_MAX_N, FWD_CONFIGS, FWD_D64_ONLY, FWD_D128_ONLY, HEAD_DIMS, SLICE_LIMIT, TUNE_EXTRA,
    TUNE_KEY, check_inputs, fused_pruner, interpreting, pruner)

LOG2E = 1.4426950408889634

# Read once, like @triton.jit does when it decorates the kernels below.
_INTERPRET = interpreting()


def attention_ref(q, k, v, key_padding_mask=None, scale=None):
    """Plain-PyTorch attention, the oracle: softmax(q k^T * scale, masked keys removed) v, in q's dtype.

    Shapes as ``attention``. Rows whose keys are all masked give zeros (not NaN), with zero gradients:
    the softmax is written out with a guarded denominator so no NaN appears anywhere, forward or backward.
    Pass fp32 copies for an fp32 reference; low-precision inputs give PyTorch's own low-precision error.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = torch.matmul(q, k.transpose(-2, -1)) * scale
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    m = s.amax(dim=-1, keepdim=True).detach()  # softmax is shift-invariant: no gradient through the max
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    denom = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
    return torch.matmul(p.to(v.dtype), v)


# ----------------------------------------------------------------------------------------------------------
# Kernels. Pointers are (B, H, N, d) with named strides; KEEP is the (B, N) uint8 key mask; LSE and
# DELTA are contiguous fp32 (B, H, N). qk_scale = scale * log2(e): softmax in base 2 (exp2 is cheaper).
# Offsets: each program first moves its pointers to its (batch, head) slice with int64 arithmetic (program
# ids are int32, so b * stride_qb or (b * H + h) * N would wrap past 2**31 elements, silently); offsets within
# a slice stay int32 (cheaper address maths on the whole tile), which check_inputs guarantees.

@triton.jit
def _fwd_block(acc, l_i, m_i, q, K, V, KEEP, start_n, offs_d, N, stride_kn, stride_kd, stride_vn, stride_vd,
               stride_mn, qk_scale, HAS_MASK: tl.constexpr, BOUNDS: tl.constexpr, UPCAST: tl.constexpr,
               DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of the online softmax: rescale the running sums, add this block's share."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    k_ptrs = K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if BOUNDS:
        k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
    else:  # a full block: no masks on the loads
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)  # unscaled: see the max below
    if HAS_MASK:
        keep = tl.load(KEEP + offs_n * stride_mn, mask=col_ok, other=0)
        col_ok = col_ok & (keep != 0)
    if BOUNDS or HAS_MASK:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    # The scale is positive, so the max of the raw scores, scaled, is the max of the scaled ones; then each
    # score takes one fused multiply-subtract before exp2 instead of a multiply and a subtract.
    # m_i starts at -1e30 (finite), so a block whose keys are all masked gives exp2(-inf) = 0, never NaN.
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    return acc, l_i, m_new


@triton.autotune(configs=FWD_CONFIGS, key=TUNE_KEY,
                 prune_configs_by={"early_config_prune": pruner(FWD_D64_ONLY, FWD_D128_ONLY)}, **TUNE_EXTRA)
@triton.jit(do_not_specialize=["N", "N_KEY"])
def _attn_fwd(Q, K, V, KEEP, O, LSE,
              stride_qb, stride_qh, stride_qn, stride_qd,
              stride_kb, stride_kh, stride_kn, stride_kd,
              stride_vb, stride_vh, stride_vn, stride_vd,
              stride_ob, stride_oh, stride_on, stride_od,
              stride_mb, stride_mn,
              H, N, N_KEY, qk_scale,
              HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
              DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)  # int64 base offsets: see "Offsets" above the kernels
    h = tl.program_id(2).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    O += b * stride_ob + h * stride_oh
    KEEP += b * stride_mb
    LSE += (b * H + h) * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):  # full key blocks: unmasked loads
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, KEEP, start_n, offs_d, N, stride_kn, stride_kd,
                                   stride_vn, stride_vd, stride_mn, qk_scale, HAS_MASK, False, UPCAST,
                                   DOT_PRECISION, BLOCK_N)
    if n_full < N:  # the ragged tail
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, K, V, KEEP, n_full, offs_d, N, stride_kn, stride_kd,
                                   stride_vn, stride_vd, stride_mn, qk_scale, HAS_MASK, True, UPCAST,
                                   DOT_PRECISION, BLOCK_N)
    # Every kept key contributes >= 1 to l_i at its row's max, so l_i == 0 means "no key kept":
    # output 0 and LSE = +inf, which makes the backward's recomputed probabilities exactly 0.
    has_key = l_i > 0.0
    l_safe = tl.where(has_key, l_i, 1.0)
    out = acc / l_safe[:, None]
    lse = tl.where(has_key, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, out.to(O.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + offs_m, lse, mask=row_ok)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA,
                    stride_ob, stride_oh, stride_on, stride_od,
                    stride_dob, stride_doh, stride_don, stride_dod,
                    H, N, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta[row] = sum_d dO * O (fp32), the softmax-backward term shared by dq and dk."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    O += b * stride_ob + h * stride_oh
    DO += b * stride_dob + h * stride_doh
    DELTA += (b * H + h) * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    o = tl.load(O + offs_m[:, None] * stride_on + offs_d[None, :] * stride_od, mask=row_ok[:, None],
                other=0.0).to(tl.float32)
    do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=row_ok[:, None],
                 other=0.0).to(tl.float32)
    tl.store(DELTA + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.autotune(configs=DKDV_CONFIGS, key=TUNE_KEY,
                 prune_configs_by={"early_config_prune": pruner(DKDV_D64_ONLY, DKDV_D128_ONLY)}, **TUNE_EXTRA)
@triton.jit(do_not_specialize=["N", "N_KEY"])
def _attn_bwd_dkdv(Q, K, V, KEEP, DO, LSE, DELTA, DK, DV, O, DQ,
                   stride_qb, stride_qh, stride_qn, stride_qd,
                   stride_kb, stride_kh, stride_kn, stride_kd,
                   stride_vb, stride_vh, stride_vn, stride_vd,
                   stride_dob, stride_doh, stride_don, stride_dod,
                   stride_gb, stride_gh, stride_gn, stride_gd,
                   stride_mb, stride_mn,
                   H, N, N_KEY, scale, qk_scale,
                   HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr, FUSED: tl.constexpr,
                   DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK, dV for one block of BLOCK_N keys, looping over all query blocks (transposed layout: keys x queries).

    FUSED (N <= BLOCK_N, one program per head): the block holds every key, so the program also computes
    delta from O (contiguous, dQ's strides) and writes each query block's complete dQ: the whole backward
    in one pass (DELTA unused). Otherwise O and DQ are unused."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_dob + h * stride_doh
    DK += b * stride_gb + h * stride_gh
    DV += b * stride_gb + h * stride_gh
    O += b * stride_gb + h * stride_gh
    DQ += b * stride_gb + h * stride_gh
    KEEP += b * stride_mb
    LSE += (b * H + h) * N
    DELTA += (b * H + h) * N
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    col_in = offs_n < N
    k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd, mask=col_in[:, None], other=0.0)
    v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd, mask=col_in[:, None], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    col_ok = col_in
    m_end = N
    if HAS_MASK:
        keep = tl.load(KEEP + offs_n * stride_mn, mask=col_in, other=0)
        col_ok = col_in & (keep != 0)
        if not FUSED:  # a block of keys that are all masked gets no gradient: skip the loop, store zeros
            m_end = tl.where(tl.max(col_ok.to(tl.int32), 0) > 0, N, 0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start_m in range(0, m_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < N
        q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
        do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=row_ok[:, None],
                     other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))  # +inf: padded rows get p = 0
        if FUSED:
            o = tl.load(O + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd, mask=row_ok[:, None],
                        other=0.0)
            delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        else:
            delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.math.exp2(s_t - lse[None, :])
        # Masked keys get no gradient. Keys past N need no zeroing for dK, dV (their rows are not stored), but
        # FUSED takes dS to dQ, where exp2(-lse) (not 0, could overflow) would meet their zero rows of K.
        if HAS_MASK or FUSED:
            p_t = tl.where(col_ok[:, None], p_t, 0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PRECISION)
        if FUSED:  # every key of the head is in this block: this query block's dQ is complete
            dq = tl.dot(tl.trans(ds_t.to(k.dtype)), k, input_precision=DOT_PRECISION) * scale
            tl.store(DQ + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd, dq.to(DQ.dtype.element_ty),
                     mask=row_ok[:, None])
    dk = dk * scale
    g_off = offs_n[:, None] * stride_gn + offs_d[None, :] * stride_gd
    tl.store(DK + g_off, dk.to(DK.dtype.element_ty), mask=col_in[:, None])
    tl.store(DV + g_off, dv.to(DV.dtype.element_ty), mask=col_in[:, None])


# The same kernel with FUSED=True, tuned apart: its blocks must cover N (BLOCK_N = N rounded up to 64 or 128).
_attn_bwd_fused = triton.autotune(configs=FUSED_CONFIGS, key=TUNE_KEY,
                                  prune_configs_by={"early_config_prune": fused_pruner(FUSED_D64_ONLY, set())},
                                  **TUNE_EXTRA)(_attn_bwd_dkdv.fn)


@triton.jit
def _dq_block(dq, q, do, lse, delta, K, V, KEEP, start_n, offs_d, N, stride_kn, stride_kd, stride_vn, stride_vd,
              stride_mn, qk_scale, HAS_MASK: tl.constexpr, BOUNDS: tl.constexpr, UPCAST: tl.constexpr,
              DOT_PRECISION: tl.constexpr, BLOCK_N: tl.constexpr):
    """One key block of dQ: recompute P from the saved LSE, then dS = P * (dP - delta), dQ += dS K."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    k_ptrs = K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd
    v_ptrs = V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
    if BOUNDS:
        k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    if HAS_MASK:
        keep = tl.load(KEEP + offs_n * stride_mn, mask=col_ok, other=0)
        col_ok = col_ok & (keep != 0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    p = tl.math.exp2(s - lse[:, None])
    if BOUNDS or HAS_MASK:  # past N, P = exp2(-lse) is not 0 and could overflow: zero it before it meets K
        p = tl.where(col_ok[None, :], p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=DOT_PRECISION)
    ds = p * (dp - delta[:, None])
    return tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PRECISION)


@triton.autotune(configs=DQ_CONFIGS, key=TUNE_KEY,
                 prune_configs_by={"early_config_prune": pruner(DQ_D64_ONLY, DQ_D128_ONLY)}, **TUNE_EXTRA)
@triton.jit(do_not_specialize=["N", "N_KEY"])
def _attn_bwd_dq(Q, K, V, KEEP, DO, LSE, DELTA, DQ,
                 stride_qb, stride_qh, stride_qn, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_dob, stride_doh, stride_don, stride_dod,
                 stride_gb, stride_gh, stride_gn, stride_gd,
                 stride_mb, stride_mn,
                 H, N, N_KEY, scale, qk_scale,
                 HEAD_DIM: tl.constexpr, HAS_MASK: tl.constexpr, UPCAST: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ for one block of BLOCK_M queries, looping over all key blocks."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    DO += b * stride_dob + h * stride_doh
    DQ += b * stride_gb + h * stride_gh
    KEEP += b * stride_mb
    LSE += (b * H + h) * N
    DELTA += (b * H + h) * N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < N
    q = tl.load(Q + offs_m[:, None] * stride_qn + offs_d[None, :] * stride_qd, mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + offs_m[:, None] * stride_don + offs_d[None, :] * stride_dod, mask=row_ok[:, None],
                 other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lse = tl.load(LSE + offs_m, mask=row_ok, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):  # full key blocks: unmasked loads, no zeroing
        dq = _dq_block(dq, q, do, lse, delta, K, V, KEEP, start_n, offs_d, N, stride_kn, stride_kd, stride_vn,
                       stride_vd, stride_mn, qk_scale, HAS_MASK, False, UPCAST, DOT_PRECISION, BLOCK_N)
    if n_full < N:  # the ragged tail
        dq = _dq_block(dq, q, do, lse, delta, K, V, KEEP, n_full, offs_d, N, stride_kn, stride_kd, stride_vn,
                       stride_vd, stride_mn, qk_scale, HAS_MASK, True, UPCAST, DOT_PRECISION, BLOCK_N)
    dq = dq * scale
    tl.store(DQ + offs_m[:, None] * stride_gn + offs_d[None, :] * stride_gd, dq.to(DQ.dtype.element_ty),
             mask=row_ok[:, None])


# ----------------------------------------------------------------------------------------------------------
# Launchers

def _n_key(n: int) -> int:
    """The autotuning bucket of a sequence length: the next power of two (at least 16)."""
    return max(16, triton.next_power_of_2(n))


def _flags(q: torch.Tensor, upcast: bool | None) -> dict:
    if upcast is None:
        upcast = _INTERPRET and q.dtype == torch.bfloat16
    # fp32 on a GPU: 3xTF32 (tensor cores, about fp32 accuracy); plain "ieee" fp32 dots compiled for sm_90
    # to FMA loops that spilled kilobytes of registers. The precision is ignored for fp16/bf16 operands.
    precision = "tf32x3" if q.dtype == torch.float32 and not _INTERPRET else "ieee"
    return {"UPCAST": upcast, "DOT_PRECISION": precision}


def _forward(q, k, v, keep, scale, upcast=None):
    """Launch the forward: returns o (B, H, N, d) in q's dtype and lse (B, H, N) fp32 (base 2)."""
    B, H, N, D = q.shape
    o = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, N), dtype=torch.float32, device=q.device)
    mask_arg, mask_strides = (keep, keep.stride()) if keep is not None else (q, (0, 0))
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B, H)  # noqa: E731
    _attn_fwd[grid](q, k, v, mask_arg, o, lse, *q.stride(), *k.stride(), *v.stride(), *o.stride(), *mask_strides,
                    H, N, _n_key(N), scale * LOG2E, HEAD_DIM=D, HAS_MASK=keep is not None, **_flags(q, upcast))
    return o, lse


def _fused(n: int, dtype: torch.dtype) -> bool:
    """Whether the backward runs as one pass (``_attn_bwd_fused``): every key of a head fits one block of
    FUSED_MAX_N, 64 in fp32 (the pruner keeps fp32 blocks <= 64 where it can)."""
    return n <= (64 if dtype == torch.float32 else FUSED_MAX_N)


def _backward(do, q, k, v, o, lse, keep, scale, upcast=None, fused=None):
    """Launch the backward: returns dq, dk, dv, each (B, H, N, d) in q's dtype.

    Short sequences (``_fused``) take one kernel, one program per head: delta, dK, dV and dQ in one pass
    over q, k, v, o and dO. Longer ones take three: delta, then dK/dV and dQ, each recomputing P.
    ``fused`` overrides the choice (tests); a fused launch needs N <= FUSED_MAX_N."""
    B, H, N, D = q.shape
    if (N - 1) * do.stride(2) + (D - 1) * do.stride(3) >= SLICE_LIMIT:  # in-slice offsets are int32
        do = do.contiguous()
    fused = _fused(N, q.dtype) if fused is None else fused
    if fused and N > FUSED_MAX_N:
        raise ValueError(f"fused: the one-pass backward needs N <= FUSED_MAX_N = {FUSED_MAX_N}, got N = {N}")
    dq = torch.empty((B, H, N, D), dtype=q.dtype, device=q.device)
    dk = torch.empty_like(dq)
    dv = torch.empty_like(dq)
    mask_arg, mask_strides = (keep, keep.stride()) if keep is not None else (q, (0, 0))
    common = dict(HEAD_DIM=D, HAS_MASK=keep is not None, **_flags(q, upcast))
    # The gradients are fresh contiguous tensors: their strides (the stride_g* slots) are dq's for all three.
    strides = (*q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(), *mask_strides)
    if fused:
        o = o if o.stride() == dq.stride() else o.contiguous()  # the kernel reads O with dQ's strides
        _attn_bwd_fused[(1, B, H)](q, k, v, mask_arg, do, lse, lse, dk, dv, o, dq, *strides, H, N, _n_key(N),
                                   scale, scale * LOG2E, FUSED=True, **common)
        return dq, dk, dv
    delta = torch.empty_like(lse)
    _attn_bwd_delta[(triton.cdiv(N, 64), B, H)](o, do, delta, *o.stride(), *do.stride(), H, N,
                                                HEAD_DIM=D, BLOCK_M=64)
    grid_kv = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B, H)  # noqa: E731
    _attn_bwd_dkdv[grid_kv](q, k, v, mask_arg, do, lse, delta, dk, dv, dk, dk, *strides, H, N, _n_key(N), scale,
                            scale * LOG2E, FUSED=False, **common)
    grid_q = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), B, H)  # noqa: E731
    _attn_bwd_dq[grid_q](q, k, v, mask_arg, do, lse, delta, dq, *strides, H, N, _n_key(N), scale,
                         scale * LOG2E, **common)
    return dq, dk, dv


class _FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, keep, scale):
        o, lse = _forward(q, k, v, keep, scale)
        ctx.save_for_backward(q, k, v, o, lse, keep)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, keep = ctx.saved_tensors
        dq, dk, dv = _backward(do, q, k, v, o, lse, keep, ctx.scale)
        return dq, dk, dv, None, None


# ----------------------------------------------------------------------------------------------------------
# Public entry point

def attention(q, k, v, key_padding_mask=None, scale=None):
    """Flash attention: softmax(q k^T * scale) v over the kept keys. See the module docstring for the contract.

    q, k, v: (B, H, N, d) fp16/bf16/fp32; key_padding_mask: bool (B, N), True = keep; scale: float or None
    (1/sqrt(d)). Returns (B, H, N, d) in q's dtype; gradients flow to q, k and v.
    """
    scale = check_inputs(q, k, v, key_padding_mask, scale, interpret=_INTERPRET)
    # bool and uint8 have the same size: the view costs nothing and Triton loads uint8 everywhere.
    keep = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    return _FlashAttention.apply(q, k, v, keep, scale)
