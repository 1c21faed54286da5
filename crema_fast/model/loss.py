"""The CR-MAE loss, reference implementation in plain PyTorch (the oracle of the fused Triton loss).

    loss = mse + lam * nce

mse: per view, the squared error of each removed patch of a present lead, averaged over its S samples,
then averaged over those patches: sum(err * m) / sum(m) with m = mask * lead_mask; then the mean of the
two views. The target is the patch normalized by its own mean and population variance over its S
samples, (x - mean) / sqrt(var + eps), eps = 1e-6 (``normalize_patches``; MAE's norm_pix_loss, except
that MAE divides the variance by S - 1: we divide by S, the one-pass statistic a fused kernel computes).
A view with no removed patch of a present lead contributes 0.

nce: NT-Xent (the InfoNCE of SimCLR) between the two views' embeddings z0, z1 (B, E), each L2-normalized.
Queries are the 2B local embeddings, keys the 2N embeddings of the global batch (N = B x world size);
a query's positive is the other view of its ECG, its negatives every other key but itself; the logits are
cosine similarities / tau; the loss is the cross-entropy averaged over the 2B queries. On one process this
is the usual symmetric 2B x 2B similarity without its diagonal. Under torch.distributed the keys come from
all ranks through ``all_gather_with_grad``, whose backward sums each rank's gradient for the gathered
keys and returns this rank's slice, so that DDP's averaging of gradients gives exactly the gradient of the
global mean loss over all 2N queries. Every rank must have the same B (the loader's drop_last).

What "the batch" is for each term (no behaviour of this module, but of how the trainer calls it):
- mse is a mean per forward pass: per rank and per micro-batch. DDP then averages the ranks and gradient
  accumulation the micro-batches with equal weights, so a micro-batch (or rank) with few removed patches
  of present leads (missing leads) weighs as much as a full one: not the mean over every masked patch of
  the global batch, which it equals only when all micro-batches hold the same number of such patches.
- nce's negatives are the keys of one forward pass: under gradient accumulation (``optim.grad_accum``)
  each query sees the 2N - 2 other embeddings of its own micro-batch gathered over ranks, not those of the
  whole optimizer step. So the contrastive task (and the loss's value, about log(2N - 1) at chance)
  depends on the micro-batch x world size, not on ``train.batch_size`` alone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _fp32_at_least(x: torch.Tensor) -> torch.Tensor:
    """Upcast half/bf16 to fp32 (statistics in fp32); leave fp64 alone (gradcheck)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LossTerms(NamedTuple):
    loss: torch.Tensor
    mse: torch.Tensor
    nce: torch.Tensor


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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, tau: float, gather: bool | None = None) -> torch.Tensor:
    """z0, z1 (B, E) projections of views 0 and 1 (not yet normalized) -> 0-dim NT-Xent (fp32).

    gather: take the keys from all ranks; None = whenever torch.distributed is initialized with > 1 rank.
    """
    z0 = F.normalize(_fp32_at_least(z0), dim=-1)
    z1 = F.normalize(_fp32_at_least(z1), dim=-1)
    b = z0.shape[0]
    gather = _distributed() if gather is None else gather
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


def cr_mae_loss(pred, target, mask, lead_mask, z0, z1, lam: float, tau: float, gather=None) -> LossTerms:
    """The CR-MAE loss; shapes as in ``masked_mse`` and ``nt_xent``. Returns (loss, mse, nce), 0-dim fp32."""
    mse = masked_mse(pred, target, mask, lead_mask)
    nce = nt_xent(z0, z1, tau, gather=gather)
    return LossTerms(mse + lam * nce, mse, nce)
