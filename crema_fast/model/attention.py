"""The attention switch: one function, three implementations chosen once by the model.

``attention(q, k, v, key_padding_mask=None, impl="ref" | "sdpa" | "triton")``

- q, k, v: (B, H, N, d), same dtype and device.
- key_padding_mask: bool (B, N), True = the key takes part (a token of a present lead), or None.
- returns (B, H, N, d) in q's dtype.

``ref`` is plain PyTorch, softmax(q k^T * scale) v with the scores and the softmax in fp32 whatever the
input dtype: ``kernels.attention.attention_ref`` (the project's one reference, also the kernel tests'
oracle) called on fp32 copies, after the all-masked-row guard below. ``sdpa`` is
``torch.nn.functional.scaled_dot_product_attention`` with a boolean mask built from ``key_padding_mask``.
``triton`` is crema-fast's flash-attention kernel,
``kernels.attention.attention(q, k, v, key_padding_mask=..., scale=...)``, loaded through
``crema_fast._kernels.load_kernels``; ``check_impl("triton")`` raises ConfigError when it is missing or
cannot run here (no CUDA and no TRITON_INTERPRET=1), and the model calls it at construction so that
there is never a silent fallback nor a failure at the first forward pass.

A query row whose keys are all masked (an ECG with no lead present) would be 0/0 = NaN in every
implementation. ``guard_padding_mask`` lets such rows attend to all their keys instead: their outputs are
finite and meaningless, and the loss ignores them. The guard runs before dispatch, so all three
implementations see the same mask.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from crema_fast import _kernels
from crema_fast.errors import ConfigError

IMPLS = ("ref", "sdpa", "triton")


def _triton_attention():
    """The kernel's public function, or ConfigError saying why it cannot be used."""
    try:
        module = _kernels.load_kernels("attention")
    except ImportError as err:  # missing module, or PyPI's unrelated ``kernels`` on the path
        raise ConfigError(f"attention='triton' is not available: {err}") from err
    fn = getattr(module, "attention", None)
    if not callable(fn):
        raise ConfigError(
            "attention='triton' is not available: kernels.attention has no function 'attention' yet"
        )
    return fn


def check_impl(impl: str) -> str:
    """Validate an implementation name at construction; for "triton", check the kernel loads and that it
    can run here (CUDA, or TRITON_INTERPRET=1)."""
    if impl not in IMPLS:
        raise ConfigError(f"attention: expected one of {IMPLS}, got {impl!r}")
    if impl == "ref":
        _kernels_reference()
    if impl == "triton":
        _triton_attention()
        # Triton compiles for a GPU; without one only its (slow) interpreter runs. Say so here rather
        # than let the first forward pass fail deep inside the launcher.
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                "attention='triton' needs a CUDA GPU (or TRITON_INTERPRET=1 for the slow CPU interpreter)"
            )
    return impl


def guard_padding_mask(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, N) bool -> the same mask, with all-False rows turned all-True (see the module docstring)."""
    if key_padding_mask is None:
        return None
    empty = ~key_padding_mask.any(dim=-1, keepdim=True)
    return key_padding_mask | empty


def _kernels_reference():
    """``kernels.attention.attention_ref``: the one plain-PyTorch reference (STYLE rule 2)."""
    try:
        return _kernels.load_kernels("attention").attention_ref
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"attention='ref' needs kernels.attention.attention_ref: {err}") from err


def attention_reference(q, k, v, key_padding_mask=None, scale=None):
    """The "ref" implementation: the kernels' reference on inputs upcast to fp32 (fp64 stays fp64), so
    that scores and softmax are fp32 whatever the input dtype; the result in q's dtype."""
    acc = torch.promote_types(q.dtype, torch.float32)
    ref = _kernels_reference()
    return ref(q.to(acc), k.to(acc), v.to(acc), key_padding_mask=key_padding_mask, scale=scale).to(q.dtype)


def attention_sdpa(q, k, v, key_padding_mask=None, scale=None):
    """PyTorch's fused path; a boolean ``attn_mask`` (True = take part) broadcast over heads and queries."""
    attn_mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale)


def attention(q, k, v, key_padding_mask=None, impl="ref", scale=None):
    """Dispatch to one implementation; see the module docstring for shapes and the padding guard."""
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"attention: expected q, k, v of one shape (B, H, N, d), got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool:
            raise TypeError(f"attention: key_padding_mask expected torch.bool, got {key_padding_mask.dtype}")
        expected = (q.shape[0], q.shape[2])
        if tuple(key_padding_mask.shape) != expected:
            raise ValueError(
                f"attention: key_padding_mask expected shape {expected}, got {tuple(key_padding_mask.shape)}"
            )
    key_padding_mask = guard_padding_mask(key_padding_mask)
    if impl == "ref":
        return attention_reference(q, k, v, key_padding_mask, scale)
    if impl == "sdpa":
        return attention_sdpa(q, k, v, key_padding_mask, scale)
    if impl == "triton":
        scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
        return _triton_attention()(q, k, v, key_padding_mask=key_padding_mask, scale=scale)
    raise ConfigError(f"attention: expected impl in {IMPLS}, got {impl!r}")
