"""Training memory from the shapes alone: what ``crema-fast pretrain --dry-run`` prints as the largest batch.

No GPU is needed to compute it (a GPU to confirm it: the training benchmark records the measured peak).
Bytes, for one process, ``e`` the autocast element size (2 for bf16, 4 without AMP):

  static  = 16 * params                      fp32 weights, gradients and AdamW's two moments
  per ECG = 2 views x (encoder + decoder) + patches, prediction and target
    a block's saved activations per token = 8*W + 6*e*W + 2*e*Hd
        two LayerNorm inputs in fp32 (8W); the qkv input, q, k, v, the attention output and the MLP input
        in e (6eW); the MLP hidden before and after GELU (2e*Hd), with W the width and Hd the MLP hidden
    + with attention="ref" the scores and probabilities, 2 * 4 * heads * N^2 per block and view (fp32)
    encoder: depth blocks over Ne = L*(K+2) tokens; with activation checkpointing only each block's input
        (4*W per token) is kept, and one block's activations are rebuilt at a time (the transient term)
    decoder: dec_depth blocks over Nd = L*(P+2) tokens
    patches, prediction and target: L*P*S*(4 + 2*e*2 + 4) (raw fp32 patches, both views' prediction and
        its gradient, the normalized target of the reference loss)
  fits(B) when static + B * per ECG + B * transient <= HEADROOM * device bytes - RESERVED

HEADROOM (0.9) leaves room for the caching allocator's fragmentation, RESERVED (1 GiB) for the CUDA context
and the kernels' workspaces. The count is an estimate: it ignores small tensors (norm statistics, masks,
the loss's per-row statistics) and temporaries freed within an op.
"""

from __future__ import annotations

from dataclasses import dataclass

from crema_fast.train.config import RunConfig

HEADROOM = 0.9
RESERVED = 2**30
# Devices the dry run reports when no GPU is present: name -> bytes of memory.
DEVICES = {"H100 80GB": 80 * 2**30, "H200 141GB": 141 * 2**30}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes: ``static`` (weights, gradients, optimizer), ``per_ecg`` kept for the backward per ECG,
    ``transient`` per ECG while one checkpointed block is recomputed (0 without checkpointing)."""

    static: int
    per_ecg: int
    transient: int

    def total(self, batch: int) -> int:
        return self.static + batch * (self.per_ecg + self.transient)

    def largest_batch(self, device_bytes: int) -> int:
        """The largest micro-batch whose estimate fits in ``device_bytes`` (0 when none does)."""
        room = HEADROOM * device_bytes - RESERVED - self.static
        return max(0, int(room // (self.per_ecg + self.transient)))


def _block(width: int, hidden: int, tokens: int, heads: int, e: int, ref_attention: bool) -> int:
    saved = tokens * (8 * width + 6 * e * width + 2 * e * hidden)
    if ref_attention:
        saved += 2 * 4 * heads * tokens * tokens
    return saved


def estimate(cfg: RunConfig, n_params: int, *, act_ckpt: bool | None = None, amp_bytes: int | None = None
             ) -> MemoryEstimate:
    """The estimate for ``cfg`` (its model, mask ratio, attention and train.act_ckpt unless given) with
    ``n_params`` parameters; ``amp_bytes`` the autocast element size (default 2: bf16 on a GPU)."""
    m, t = cfg.model, cfg.train
    e = 2 if amp_bytes is None else int(amp_bytes)
    ckpt = t.act_ckpt if act_ckpt is None else bool(act_ckpt)
    ref = t.attention == "ref"
    L, P, S = m.n_leads, m.n_patches, m.patch
    ne = L * (cfg.mask.n_keep(P) + 2)
    nd = L * (P + 2)
    enc_block = _block(m.dim, m.mlp_hidden, ne, m.heads, e, ref)
    if ckpt:
        encoder, transient = m.depth * 4 * m.dim * ne, 2 * enc_block
    else:
        encoder, transient = m.depth * enc_block, 0
    decoder = m.dec_depth * _block(m.dec_dim, m.dec_mlp_hidden, nd, m.dec_heads, e, ref)
    io = L * P * S * (4 + 2 * e * 2 + 4)
    return MemoryEstimate(static=16 * int(n_params), per_ecg=2 * (encoder + decoder) + io, transient=transient)


def report(cfg: RunConfig, n_params: int) -> list[str]:
    """Lines for the dry run: the estimate and the largest micro-batch per device, with and without
    activation checkpointing (a local GPU first, when there is one)."""
    devices = dict(DEVICES)
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            devices = {f"{props.name} (this machine)": props.total_memory, **devices}
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    plain, ckpt = estimate(cfg, n_params, act_ckpt=False), estimate(cfg, n_params, act_ckpt=True)
    lines = [f"memory estimate (bf16 autocast, attention={cfg.train.attention}; crema_fast/train/memory.py): "
             f"static {plain.static / 2**30:.2f} GiB, {plain.per_ecg / 2**20:.1f} MiB per ECG "
             f"({(ckpt.per_ecg + ckpt.transient) / 2**20:.1f} with train.act_ckpt)",
             "largest micro-batch per GPU that fits (estimate; a GPU run confirms it):"]
    for name, size in devices.items():
        lines.append(f"  {name:<28} {plain.largest_batch(size):>7,}   with act_ckpt {ckpt.largest_batch(size):>7,}")
    return lines
