"""The CR-MAE loss switch: one function, two implementations chosen once by the model.

``cr_mae_loss(pred, patches, mask, lead_mask, z0, z1, lam, tau, eps=1e-6, normalize=True, impl="ref")``
-> ``LossTerms(loss, mse, nce)``, 0-dim fp32, ``loss = mse + lam * nce``.

Shapes, dtypes and the exact definitions (population variance, eps, per-view means, a view with no removed
patch of a present lead contributing 0, NT-Xent's keys gathered across ranks) are the contract of
``kernels/crmae_loss.py``, which holds both implementations: ``ref`` is its plain-PyTorch reference
``crmae_loss_ref`` (runs anywhere; the oracle), ``triton`` its fused kernels ``crmae_loss`` (the per-patch
normalization inside the kernel, no (2B) x (2N) logits in memory). ``check_impl("triton")`` raises
ConfigError when the kernel is missing or cannot run here (no CUDA and no TRITON_INTERPRET=1); the model
calls it at construction, so there is never a silent fallback nor a failure at the first forward pass.

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

import os

import torch

from crema_fast import _kernels
from crema_fast.errors import ConfigError

IMPLS = ("ref", "triton")


def _module():
    try:
        return _kernels.load_kernels("crmae_loss")
    except ImportError as err:  # missing module, or PyPI's unrelated ``kernels`` on the path
        raise ConfigError(f"loss: kernels.crmae_loss is not available: {err}") from err


def check_impl(impl: str) -> str:
    """Validate a loss implementation name at construction; for "triton", that it can run here."""
    if impl not in IMPLS:
        raise ConfigError(f"loss: expected one of {IMPLS}, got {impl!r}")
    # Before the import: Triton reads TRITON_INTERPRET when it decorates the kernels.
    if impl == "triton" and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        raise ConfigError("loss='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 for the slow CPU interpreter)")
    _module()
    return impl


@torch.compiler.disable
def _fused(*args):
    """The Triton loss as one opaque call under torch.compile: dynamo does not trace its launchers (under
    the interpreter it fails inside them), the compiled model graph-breaks once around the loss, which is
    fused already. Its autograd.Functions still give the backward."""
    return _module().crmae_loss(*args)


def cr_mae_loss(pred, patches, mask, lead_mask, z0, z1, lam: float, tau: float, eps: float = 1e-6,
                normalize: bool = True, impl: str = "ref", gather: bool | None = None):
    """Dispatch to one implementation; arguments as ``kernels.crmae_loss.crmae_loss``."""
    args = (pred, patches, mask, lead_mask, z0, z1, lam, tau, eps, normalize, gather)
    if impl == "ref":
        return _module().crmae_loss_ref(*args)
    if impl == "triton":
        return _fused(*args)
    raise ConfigError(f"loss: expected impl in {IMPLS}, got {impl!r}")


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(..., S) -> (..., S) fp32: the reference's per-patch normalization (for plots and tests)."""
    return _module().normalize_patches(patches, eps)
