"""The CR-MAE loss (masked per-patch-normalized MSE + lam * NT-Xent), fused in Triton, beside its reference.

Contract
--------
``crmae_loss(pred, patches, mask, lead_mask, z0, z1, lam, tau, eps=1e-6, normalize=True, gather=None)``
returns ``LossTerms(loss, mse, nce)``, three 0-dim fp32 tensors, ``loss = mse + lam * nce``.

- ``pred``: (2, B, L, P, S) the decoder's reconstruction of both views; float16, bfloat16 or float32.
- ``patches``: (B, L, P, S) the raw patches (any float dtype). With ``normalize`` each is normalized by its
  own mean and population variance over its S samples, (x - mean) / sqrt(var + eps), inside the kernel: no
  normalized copy is written. ``normalize=False`` reconstructs the raw patch. No gradient flows to it.
- ``mask``: (2, B, L, P) 1 = removed (weights; 0/1 in practice), float or bool; ``lead_mask`` bool (B, L).
- ``z0``, ``z1``: (B, E) the two views' projections, not normalized; float16, bfloat16 or float32.
- ``lam`` >= 0, ``tau`` > 0, ``eps`` > 0: floats. ``gather``: take NT-Xent's keys from every rank
  (``all_gather_with_grad``); None = whenever torch.distributed is initialized with more than one rank.
- Limits: 1 <= S <= 256 (a patch is one register tile), 1 <= E <= 1024 (tested range; E is looped over),
  any B >= 1, L and P (P = 64 and beyond work: rows are flattened). Differentiable in pred, z0 and z1.

Definitions (the reference below is the oracle and spells them out):
- mse: per view, sum(err * m) / max(sum(m), 1) with err the mean over S of the squared error of a patch
  and m = mask * lead_mask; then the mean of the two views. A view with no removed patch of a present
  lead contributes 0. (MAE's norm_pix_loss divides the variance by S - 1; we divide by S.)
- nce: NT-Xent (SimCLR) between the L2-normalized z0 and z1, cosine / tau. Queries are the 2B local
  embeddings, keys the 2N of the global batch (view 0 of every rank, then view 1), a query's positive the
  other view of its ECG, its negatives every other key but itself; the cross-entropy averaged over the 2B
  queries. Under torch.distributed the keys come through ``all_gather_with_grad``, whose backward sums each
  rank's gradient for the gathered keys and returns this rank's slice: DDP's averaging then gives the
  gradient of the global mean loss. Every rank must have the same B.

Kernels
-------
``_mse_fwd``: one program per BLOCK_R patches, both views: the raw patch is read once, normalized in fp32
registers, and each view's squared error is reduced to a per-program partial sum (summed by torch: no
atomics, deterministic). The gradient for pred is written in the same pass (Liger-Kernel's habit); the
backward only scales it by the incoming gradient. Patches removed in neither view and absent leads load
nothing (masked loads); their gradient is written as zeros.
``_nce_fwd``: one program per BLOCK_M queries, looping over key blocks with an online base-2 log-sum-exp
in fp32; the (2B) x (2N) logits live only in registers. It saves the log-sum-exp per query.
``_nce_bwd_dq`` / ``_nce_bwd_dk``: recompute each logit tile from the saved statistics,
p = exp(s - lse), and accumulate (p - onehot(positive)) against keys (dq) or queries (dk); E is tiled in
the output (grid axis 1), so at E > BLOCK_EO each tile recomputes the logits. The L2 normalization and its
gradient, (dn - n (n . dn)) / max(|z|, 1e-12), are O(B E) torch ops in the launcher.

Numerics: statistics and accumulators fp32. NT-Xent's dots take fp16/bf16 operands (the normalized
embeddings cast to z's dtype) on the GPU, and fp32 inputs as 3xTF32 there (IEEE in the interpreter).
Under TRITON_INTERPRET=1 bf16 operands become fp32 (its bf16 arithmetic is wrong, shared/notes); the
kernels themselves do no bf16 arithmetic, only bf16 loads, casts and stores. Block sizes are fixed (no
autotuning yet: no GPU sweep has been run for this op).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels._attention_configs import interpreting

LOG2E = 1.4426950408889634
MAX_S, MAX_E = 256, 1024
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
NORM_EPS = 1e-12  # F.normalize's

_INTERPRET = interpreting()


class LossTerms(NamedTuple):
    loss: torch.Tensor
    mse: torch.Tensor
    nce: torch.Tensor


# ----------------------------------------------------------------------------------------------------------
# The reference (plain PyTorch): the oracle of the tests and the baseline of the benchmark.

def _fp32_at_least(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bf16 to fp32 (statistics in fp32); leave fp64 alone (gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., S) -> (..., S): each patch minus its mean, over sqrt(population variance + eps); in fp32."""
    x = _fp32_at_least(patches)
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, lead_mask: torch.Tensor):
    """pred (V, B, L, P, S), target (B, L, P, S), mask (V, B, L, P) 1 = removed, lead_mask bool (B, L)
    -> 0-dim mean over views of the per-view masked mean squared error (fp32)."""
    err = (_fp32_at_least(pred) - _fp32_at_least(target)[None]).pow(2).mean(dim=-1)  # (V, B, L, P)
    weight = mask.to(err.dtype) * lead_mask.to(err.dtype)[None, :, :, None]
    per_view = (err * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1.0)
    return per_view.mean()


class _AllGatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward sums the gradient over ranks and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        world = dist.get_world_size()
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss depends on every rank's keys: this rank's gradient is the sum over ranks
        # of their gradients for its slice. all_reduce then slice (gloo has no reduce_scatter).
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(n, ...) on each of W ranks -> (W * n, ...) in rank order; gradients flow back to every rank."""
    return _AllGatherWithGrad.apply(x)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, tau: float, gather: bool | None = None) -> torch.Tensor:
    """z0, z1 (B, E) projections of views 0 and 1 (not yet normalized) -> 0-dim NT-Xent (fp32)."""
    z0 = F.normalize(_fp32_at_least(z0), dim=-1)
    z1 = F.normalize(_fp32_at_least(z1), dim=-1)
    b = z0.shape[0]
    gather = distributed() if gather is None else gather
    if gather:
        rank, world = dist.get_rank(), dist.get_world_size()
        k0, k1 = all_gather_with_grad(z0), all_gather_with_grad(z1)
    else:
        rank, world = 0, 1
        k0, k1 = z0, z1
    n = b * world
    queries = torch.cat([z0, z1], dim=0)  # (2B, E)
    keys = torch.cat([k0, k1], dim=0)  # (2N, E): view 0 of the global batch, then view 1
    logits = queries @ keys.t() / tau  # (2B, 2N)
    local = torch.arange(b, device=z0.device) + rank * b  # global index of each local ECG
    self_idx = torch.cat([local, local + n])
    positive = torch.cat([local + n, local])
    rows = torch.arange(2 * b, device=z0.device)
    is_self = torch.zeros(2 * b, 2 * n, dtype=torch.bool, device=z0.device)
    is_self[rows, self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    return F.cross_entropy(logits, positive)


def crmae_loss_ref(pred, patches, mask, lead_mask, z0, z1, lam: float, tau: float, eps: float = 1e-6,
                   normalize: bool = True, gather: bool | None = None) -> LossTerms:
    """The reference CR-MAE loss; arguments as ``crmae_loss``. Writes the normalized target and the
    (2B) x (2N) logits: what the kernels avoid."""
    target = normalize_patches(patches, eps) if normalize else _fp32_at_least(patches)
    mse = masked_mse(pred, target, mask, lead_mask)
    nce = nt_xent(z0, z1, tau, gather=gather)
    return LossTerms(mse + lam * nce, mse, nce)


# ----------------------------------------------------------------------------------------------------------
# Kernels. Rows of the MSE kernel are the B*L*P patches, pred's view v at offset v*R*S.

@triton.jit
def _mse_view(PRED, GRAD, offs, ok, m, w, t, inv_s, STORE_GRAD: tl.constexpr):
    """One view of one block of patches: its weighted error sum; its gradient written where asked."""
    live = ok & (m != 0)[:, None]
    p = tl.load(PRED + offs, mask=live, other=0.0).to(tl.float32)
    d = tl.where(live, p - t, 0.0)
    err = tl.sum(d * d, axis=1) * inv_s  # (BLOCK_R,) mean squared error per patch
    if STORE_GRAD:
        g = d * (2.0 * inv_s * w * m)[:, None]
        tl.store(GRAD + offs, g.to(GRAD.dtype.element_ty), mask=ok)
    return tl.sum(err * m, axis=0) * w


@triton.jit
def _mse_fwd(PRED, PATCH, MASK, LEAD, W, GRAD, PART, R, S, P, eps, inv_s,
             NORMALIZE: tl.constexpr, STORE_GRAD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_S)
    row_ok = rows < R
    ok = row_ok[:, None] & (cols < S)[None, :]
    lead = tl.load(LEAD + rows // P, mask=row_ok, other=0).to(tl.float32)
    m0 = tl.load(MASK + rows, mask=row_ok, other=0).to(tl.float32) * lead
    m1 = tl.load(MASK + R + rows, mask=row_ok, other=0).to(tl.float32) * lead
    offs = rows.to(tl.int64)[:, None] * S + cols[None, :]
    need = ok & ((m0 != 0) | (m1 != 0))[:, None]
    x = tl.load(PATCH + offs, mask=need, other=0.0).to(tl.float32)
    if NORMALIZE:
        mean = tl.sum(x, axis=1) * inv_s
        xc = tl.where(ok, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) * inv_s
        t = xc / tl.sqrt(var + eps)[:, None]
    else:
        t = x
    w0 = tl.load(W)
    w1 = tl.load(W + 1)
    part = _mse_view(PRED, GRAD, offs, ok, m0, w0, t, inv_s, STORE_GRAD)
    part += _mse_view(PRED + R * S, GRAD + R * S, offs, ok, m1, w1, t, inv_s, STORE_GRAD)
    tl.store(PART + pid, part)


@triton.jit
def _nce_scores(Q, K, rows, cols, row_ok, col_ok, E, stride_q, stride_k,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, PREC: tl.constexpr):
    """(BLOCK_M, BLOCK_N) fp32 dot products of normalized queries and keys, E looped in BLOCK_E chunks."""
    s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    offs_e = tl.arange(0, BLOCK_E)
    for e0 in range(0, E, BLOCK_E):
        e_ok = (e0 + offs_e) < E
        q = tl.load(Q + rows.to(tl.int64)[:, None] * stride_q + (e0 + offs_e)[None, :],
                    mask=row_ok[:, None] & e_ok[None, :], other=0.0)
        k = tl.load(K + cols.to(tl.int64)[:, None] * stride_k + (e0 + offs_e)[None, :],
                    mask=col_ok[:, None] & e_ok[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), s, input_precision=PREC)
    return s


@triton.jit
def _nce_ids(rows, B, OFFSET, N):
    """Global key index of each local query itself and of its positive (view 0 first, then view 1)."""
    first = rows < B
    self_idx = tl.where(first, OFFSET + rows, N + OFFSET + rows - B)
    pos_idx = tl.where(first, N + OFFSET + rows, OFFSET + rows - B)
    return self_idx, pos_idx


@triton.jit
def _nce_fwd(Q, K, LSE, LROW, M2, NK, B, OFFSET, N, E, qk_scale, stride_q, stride_k,
             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M2
    self_idx, pos_idx = _nce_ids(rows, B, OFFSET, N)
    # A finite floor, not -inf: a key block may hold only masked keys (the query itself, the ragged end).
    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    s_pos = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < NK
        s = _nce_scores(Q, K, rows, cols, row_ok, col_ok, E, stride_q, stride_k,
                        BLOCK_M, BLOCK_N, BLOCK_E, PREC) * qk_scale  # base-2 logits
        s_pos += tl.sum(tl.where(cols[None, :] == pos_idx[:, None], s, 0.0), axis=1)
        s = tl.where((cols[None, :] == self_idx[:, None]) | (~col_ok)[None, :], float("-inf"), s)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    lse = m_i + tl.log2(l_i)
    tl.store(LSE + rows, lse, mask=row_ok)
    tl.store(LROW + rows, (lse - s_pos) * 0.6931471805599453, mask=row_ok)


@triton.jit
def _nce_dlogits(Q, K, LSE, rows, cols, row_ok, col_ok, B, OFFSET, N, E, qk_scale, stride_q, stride_k,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, PREC: tl.constexpr):
    """d loss_row / d logit (unscaled): softmax(s) - onehot(positive), 0 at the query itself and padding."""
    self_idx, pos_idx = _nce_ids(rows, B, OFFSET, N)
    lse = tl.load(LSE + rows, mask=row_ok, other=0.0)
    s = _nce_scores(Q, K, rows, cols, row_ok, col_ok, E, stride_q, stride_k,
                    BLOCK_M, BLOCK_N, BLOCK_E, PREC) * qk_scale
    p = tl.exp2(s - lse[:, None])
    dead = (cols[None, :] == self_idx[:, None]) | (~col_ok)[None, :] | (~row_ok)[:, None]
    p = tl.where(dead, 0.0, p)
    return p - tl.where((cols[None, :] == pos_idx[:, None]) & row_ok[:, None], 1.0, 0.0)


@triton.jit
def _nce_bwd_dq(Q, K, LSE, SCALE, DQ, M2, NK, B, OFFSET, N, E, qk_scale, stride_q, stride_k,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EO: tl.constexpr,
                PREC: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    eo = tl.program_id(1) * BLOCK_EO + tl.arange(0, BLOCK_EO)
    row_ok = rows < M2
    eo_ok = eo < E
    acc = tl.zeros((BLOCK_M, BLOCK_EO), dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < NK
        ds = _nce_dlogits(Q, K, LSE, rows, cols, row_ok, col_ok, B, OFFSET, N, E, qk_scale, stride_q,
                          stride_k, BLOCK_M, BLOCK_N, BLOCK_E, PREC)
        k = tl.load(K + cols.to(tl.int64)[:, None] * stride_k + eo[None, :],
                    mask=col_ok[:, None] & eo_ok[None, :], other=0.0)
        acc = tl.dot(ds.to(k.dtype), k, acc, input_precision=PREC)
    acc = acc * tl.load(SCALE)
    tl.store(DQ + rows.to(tl.int64)[:, None] * E + eo[None, :], acc, mask=row_ok[:, None] & eo_ok[None, :])


@triton.jit
def _nce_bwd_dk(Q, K, LSE, SCALE, DK, M2, NK, B, OFFSET, N, E, qk_scale, stride_q, stride_k,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_EO: tl.constexpr,
                PREC: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    eo = tl.program_id(1) * BLOCK_EO + tl.arange(0, BLOCK_EO)
    col_ok = cols < NK
    eo_ok = eo < E
    acc = tl.zeros((BLOCK_N, BLOCK_EO), dtype=tl.float32)
    for start_m in range(0, M2, BLOCK_M):
        rows = start_m + tl.arange(0, BLOCK_M)
        row_ok = rows < M2
        ds = _nce_dlogits(Q, K, LSE, rows, cols, row_ok, col_ok, B, OFFSET, N, E, qk_scale, stride_q,
                          stride_k, BLOCK_M, BLOCK_N, BLOCK_E, PREC)
        q = tl.load(Q + rows.to(tl.int64)[:, None] * stride_q + eo[None, :],
                    mask=row_ok[:, None] & eo_ok[None, :], other=0.0)
        acc = tl.dot(tl.trans(ds).to(q.dtype), q, acc, input_precision=PREC)
    acc = acc * tl.load(SCALE)
    tl.store(DK + cols.to(tl.int64)[:, None] * E + eo[None, :], acc, mask=col_ok[:, None] & eo_ok[None, :])


# ----------------------------------------------------------------------------------------------------------
# Launchers.

def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(n)))


def _mse_forward(pred, patches, mask, lead_mask, eps, normalize, store_grad):
    """-> (mse 0-dim fp32, grad for pred (2, B, L, P, S) in pred's dtype or None)."""
    _, b, L, P, S = pred.shape
    R = b * L * P
    pred = pred.contiguous()
    mask = mask.to(torch.float32).contiguous()
    lead = lead_mask.to(torch.uint8).contiguous()
    # 1 / (2 * count) per view: the kernel then writes each term already scaled (no second pass).
    count = (mask * lead_mask.to(torch.float32)[None, :, :, None]).sum(dim=(1, 2, 3))
    w = (0.5 / count.clamp_min(1.0)).contiguous()
    block_s = _pow2(S, 16, MAX_S)
    block_r = max(1, 4096 // block_s)  # a 4096-element tile per view
    grid = (triton.cdiv(R, block_r),)
    part = torch.empty(grid[0], dtype=torch.float32, device=pred.device)
    grad = torch.empty_like(pred) if store_grad else pred  # unused pointer when no gradient is wanted
    _mse_fwd[grid](pred, patches.contiguous(), mask, lead, w, grad, part, R, S, P, float(eps), 1.0 / S,
                   NORMALIZE=bool(normalize), STORE_GRAD=bool(store_grad), BLOCK_R=block_r, BLOCK_S=block_s,
                   num_warps=4)
    return part.sum(), (grad if store_grad else None)


def _nce_blocks(e: int) -> dict:
    return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_E=_pow2(e, 16, 64))


def _prec(dtype) -> str:
    return "tf32x3" if dtype == torch.float32 and not _INTERPRET else "ieee"


def _nce_forward(qn, kn, b, offset, n, tau):
    """qn (2B, E), kn (2N, E) normalized operands -> (per-query loss (2B,) fp32, base-2 lse (2B,) fp32)."""
    m2, e = qn.shape
    nk = kn.shape[0]
    lse = torch.empty(m2, dtype=torch.float32, device=qn.device)
    lrow = torch.empty_like(lse)
    blocks = _nce_blocks(e)
    grid = (triton.cdiv(m2, blocks["BLOCK_M"]),)
    _nce_fwd[grid](qn, kn, lse, lrow, m2, nk, b, offset, n, e, LOG2E / tau, qn.stride(0), kn.stride(0),
                   PREC=_prec(qn.dtype), num_warps=4, **blocks)
    return lrow, lse


def _nce_backward(qn, kn, lse, scale, b, offset, n, tau):
    """-> (d loss / d qn (2B, E), d loss / d kn (2N, E)), fp32; scale: 0-dim device tensor g / (2B tau)."""
    m2, e = qn.shape
    nk = kn.shape[0]
    blocks = _nce_blocks(e)
    block_eo = _pow2(e, 16, 128)
    dq = torch.empty(m2, e, dtype=torch.float32, device=qn.device)
    dk = torch.empty(nk, e, dtype=torch.float32, device=qn.device)
    common = (m2, nk, b, offset, n, e, LOG2E / tau, qn.stride(0), kn.stride(0))
    kw = dict(BLOCK_EO=block_eo, PREC=_prec(qn.dtype), num_warps=4, **blocks)
    _nce_bwd_dq[(triton.cdiv(m2, blocks["BLOCK_M"]), triton.cdiv(e, block_eo))](qn, kn, lse, scale, dq,
                                                                                 *common, **kw)
    _nce_bwd_dk[(triton.cdiv(nk, blocks["BLOCK_N"]), triton.cdiv(e, block_eo))](qn, kn, lse, scale, dk,
                                                                                 *common, **kw)
    return dq, dk


def _l2_normalize(z: torch.Tensor):
    """(M, E) -> (z / max(|z|, eps) in fp32, |z| (M, 1) fp32)."""
    zf = z.to(torch.float32)
    norm = zf.norm(dim=1, keepdim=True)
    return zf / norm.clamp_min(NORM_EPS), norm


def _l2_normalize_backward(dn, n, norm):
    """Gradient through x / max(|x|, eps): (dn - n (n . dn)) / |x| where |x| > eps, dn / eps below."""
    radial = n * (n * dn).sum(dim=1, keepdim=True) * (norm > NORM_EPS)
    return (dn - radial) / norm.clamp_min(NORM_EPS)


def _op_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dots' operand dtype: z's own (fp16/bf16 tensor cores), fp32 for bf16 when interpreting."""
    return torch.float32 if dtype == torch.float32 or (_INTERPRET and dtype == torch.bfloat16) else dtype


# ----------------------------------------------------------------------------------------------------------
# autograd.Functions.

class _MaskedMSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, patches, mask, lead_mask, eps, normalize):
        mse, grad = _mse_forward(pred, patches, mask, lead_mask, eps, normalize, ctx.needs_input_grad[0])
        ctx.save_for_backward(grad if grad is not None else torch.empty(0))
        return mse

    @staticmethod
    def backward(ctx, g):
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None, None, None, None


class _NTXent(torch.autograd.Function):
    """zq (2B, E) local queries, zk (2N, E) the gathered keys or None (keys = queries, one process)."""

    @staticmethod
    def forward(ctx, zq, zk, b, offset, n, tau):
        qn, q_norm = _l2_normalize(zq)
        if zk is None:
            kn, k_norm = qn, q_norm
        else:
            kn, k_norm = _l2_normalize(zk)
        op = _op_dtype(zq.dtype)
        q_op = qn.to(op).contiguous()
        k_op = q_op if zk is None else kn.to(op).contiguous()
        lrow, lse = _nce_forward(q_op, k_op, b, offset, n, tau)
        ctx.save_for_backward(qn, q_norm, q_op, kn, k_norm, k_op, lse)
        ctx.shared, ctx.args, ctx.dtypes = zk is None, (b, offset, n, tau), (zq.dtype, None if zk is None else zk.dtype)
        return lrow.mean()

    @staticmethod
    def backward(ctx, g):
        qn, q_norm, q_op, kn, k_norm, k_op, lse = ctx.saved_tensors
        b, offset, n, tau = ctx.args
        scale = (g.to(torch.float32) / (qn.shape[0] * tau)).reshape(1).contiguous()
        dq, dk = _nce_backward(q_op, k_op, lse, scale, b, offset, n, tau)
        if ctx.shared:
            return _l2_normalize_backward(dq + dk, qn, q_norm).to(ctx.dtypes[0]), None, None, None, None, None
        dzq = _l2_normalize_backward(dq, qn, q_norm).to(ctx.dtypes[0])
        dzk = _l2_normalize_backward(dk, kn, k_norm).to(ctx.dtypes[1])
        return dzq, dzk, None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# The public function.

def _check(pred, patches, mask, lead_mask, z0, z1, lam, tau, eps, interpret):
    if not isinstance(pred, torch.Tensor) or pred.dim() != 5 or pred.shape[0] != 2:
        got = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
        raise ValueError(f"crmae_loss: pred expected shape (2, B, L, P, S), got {got}")
    _, b, L, P, S = pred.shape
    expect = {"patches": (patches, (b, L, P, S)), "mask": (mask, (2, b, L, P)), "lead_mask": (lead_mask, (b, L))}
    for name, (t, shape) in expect.items():
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"crmae_loss: {name} expected shape {shape}, got {got}")
    for name, z in (("z0", z0), ("z1", z1)):
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[0] != b:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"crmae_loss: {name} expected shape ({b}, E), got {got}")
    if z0.shape != z1.shape:
        raise ValueError(f"crmae_loss: z0 and z1 expected one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    for name, t in (("pred", pred), ("z0", z0), ("z1", z1)):
        if t.dtype not in DTYPES:
            raise TypeError(f"crmae_loss: {name} expected one of {DTYPES}, got {t.dtype}")
    if z0.dtype != z1.dtype:
        raise TypeError(f"crmae_loss: z0 and z1 expected one dtype, got {z0.dtype} and {z1.dtype}")
    if not patches.is_floating_point():
        raise TypeError(f"crmae_loss: patches expected a floating dtype, got {patches.dtype}")
    if lead_mask.dtype != torch.bool:
        raise TypeError(f"crmae_loss: lead_mask expected torch.bool, got {lead_mask.dtype}")
    if not 1 <= S <= MAX_S:
        raise ValueError(f"crmae_loss: patch length S expected 1..{MAX_S}, got {S}")
    if not 1 <= z0.shape[1] <= MAX_E:
        raise ValueError(f"crmae_loss: embedding width E expected 1..{MAX_E}, got {z0.shape[1]}")
    for name, v, ok in (("lam", lam, lam >= 0), ("tau", tau, tau > 0), ("eps", eps, eps > 0)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and ok):
            raise ValueError(f"crmae_loss: {name} expected a finite number ({'>= 0' if name == 'lam' else '> 0'}), "
                             f"got {v!r}")
    devices = {t.device for t in (pred, patches, mask, lead_mask, z0, z1)}
    if len(devices) != 1:
        raise ValueError(f"crmae_loss: expected every tensor on one device, got {sorted(map(str, devices))}")
    if pred.device.type != "cuda" and not interpret:
        raise ValueError(f"crmae_loss: expected CUDA tensors (or TRITON_INTERPRET=1), got {pred.device}")


def crmae_loss(pred, patches, mask, lead_mask, z0, z1, lam: float, tau: float, eps: float = 1e-6,
               normalize: bool = True, gather: bool | None = None) -> LossTerms:
    """The fused CR-MAE loss (see the module docstring): ``LossTerms(loss, mse, nce)``, 0-dim fp32."""
    _check(pred, patches, mask, lead_mask, z0, z1, lam, tau, eps, _INTERPRET)
    b = z0.shape[0]
    mse = _MaskedMSE.apply(pred, patches, mask, lead_mask, float(eps), bool(normalize))
    gather = distributed() if gather is None else gather
    zq = torch.cat([z0, z1], dim=0)
    if gather:
        rank, world = dist.get_rank(), dist.get_world_size()
        zk = torch.cat([all_gather_with_grad(z0), all_gather_with_grad(z1)], dim=0)
        nce = _NTXent.apply(zq, zk, b, rank * b, b * world, float(tau))
    else:
        nce = _NTXent.apply(zq, None, b, 0, b, float(tau))
    return LossTerms(mse + lam * nce, mse, nce)
