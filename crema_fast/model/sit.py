"""The Signal Transformer (SiT) for 12-lead ECGs, split MAE style:
``random_masking`` -> ``forward_encoder`` -> ``forward_decoder`` (the loss is in loss.py).

Tokens. Each lead of C = P * S samples is cut into P patches of S samples; a patch embedding (a Linear,
or a small per-patch conv stem) maps each to ``dim``. Every token gets a fixed sin-cos position over time
and a learned embedding of its lead. Each lead is framed by a learned separator token at each end
(SEP, position 0 before the first patch and position P + 1 after the last; patches are at 1..P), which
also carries its lead's embedding. So one lead is [SEP, patch tokens..., SEP] and the sequence is the 12
leads one after another.

Mask convention (MAE, stated once): ``mask`` is 1 where a patch is removed, 0 where it is visible.
Per lead, ``ids_keep`` (..., K) lists the kept patches and ``ids_restore`` (..., P) gives, for each patch
p, its position in [kept patches in ids_keep order, removed patches]; with ``ids_shuffle`` = argsort of
random noise, ``ids_keep = ids_shuffle[:K]`` and ``ids_restore = argsort(ids_shuffle)``.

Encoder: a pre-norm ViT over the visible tokens of all leads of one view, 12 * (K + 2) tokens
(120 at K = 8). Leads absent in ``lead_mask`` stay in the sequence (fixed shapes) but are masked out as
keys, so they cannot change a present lead's output. Views are stacked on the batch axis (2B sequences).
Decoder: the encoder output -> Linear to ``dec_dim``; a learned mask token fills each removed patch;
``ids_restore`` puts the patches of each lead back in time order; decoder positions and lead embeddings
are added; a pre-norm transformer over 12 * (P + 2) tokens; a Linear predicts each patch's S samples.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from crema_fast.model.attention import attention as attention_fn
from crema_fast.model.attention import check_impl
from crema_fast.model.config import ModelConfig


def sincos_table(n_pos: int, dim: int) -> torch.Tensor:
    """(n_pos, dim) fixed positions: [sin(p * w_i), cos(p * w_i)] with w_i = 10000^(-i / (dim/2))."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    angles = torch.arange(n_pos, dtype=torch.float64)[:, None] * omega[None, :]
    table = torch.zeros(n_pos, dim, dtype=torch.float64)
    table[:, :half] = angles.sin()
    table[:, half : 2 * half] = angles.cos()  # an odd dim leaves its last column at 0
    return table.float()


def random_masking(n_views, batch, n_leads, n_patches, n_keep, generator=None, device=None):
    """MAE per-lead random masking: each lead keeps ``n_keep`` patches at independent positions.

    Returns ids_keep int64 (V, B, L, K), mask float32 (V, B, L, P) (1 = removed), ids_restore int64
    (V, B, L, P). The loader has its own (Numba) masking; this one is for tests, demos and ``encode``-less
    experiments.
    """
    noise = torch.rand(n_views, batch, n_leads, n_patches, generator=generator, device=device)
    ids_shuffle = noise.argsort(dim=-1)
    ids_restore = ids_shuffle.argsort(dim=-1)
    ids_keep = ids_shuffle[..., :n_keep]
    mask = torch.ones(n_views, batch, n_leads, n_patches, device=device)
    mask[..., :n_keep] = 0
    mask = torch.gather(mask, -1, ids_restore)
    return ids_keep, mask, ids_restore


def unshuffle(visible: torch.Tensor, mask_token: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
    """visible (..., K, D), mask_token (D,), ids_restore (..., P) -> (..., P, D) in time order."""
    *lead, n_keep, dim = visible.shape
    n_patches = ids_restore.shape[-1]
    fill = mask_token.to(visible.dtype).expand(*lead, n_patches - n_keep, dim)
    shuffled = torch.cat([visible, fill], dim=-2)
    return torch.gather(shuffled, -2, ids_restore[..., None].expand(*lead, n_patches, dim))


class PatchEmbed(nn.Module):
    """(..., S) patches -> (..., dim). "linear": one Linear. "conv": per patch, two Conv1d (kernel 9,
    stride 3, padding 4, GELU) with ``stem_channels`` channels, flattened, then a Linear."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.stem = cfg.stem
        if cfg.stem == "linear":
            self.proj = nn.Linear(cfg.patch, cfg.dim)
            return
        c = cfg.stem_channels
        self.conv = nn.Sequential(
            nn.Conv1d(1, c, 9, stride=3, padding=4), nn.GELU(),
            nn.Conv1d(c, c, 9, stride=3, padding=4), nn.GELU(),
        )
        self.stem_len = conv_stem_lengths(cfg.patch)[1]
        self.proj = nn.Linear(c * self.stem_len, cfg.dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if self.stem == "linear":
            return self.proj(patches)
        *lead, s = patches.shape
        y = self.conv(patches.reshape(-1, 1, s))  # (n, c, stem_len)
        return self.proj(y.flatten(1)).view(*lead, -1)


def conv_stem_lengths(patch: int) -> tuple[int, int]:
    """Output lengths of the conv stem's two layers for a patch of ``patch`` samples."""
    l1 = (patch + 2 * 4 - 9) // 3 + 1
    return l1, (l1 + 2 * 4 - 9) // 3 + 1


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool, impl: str):
        super().__init__()
        self.heads = heads
        self.impl = impl
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = attention_fn(qkv[0], qkv[1], qkv[2], key_padding_mask, impl=self.impl)  # (B, H, N, hd)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, cfg: ModelConfig, impl: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = SelfAttention(dim, heads, cfg.qkv_bias, impl)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, dim))

    def forward(self, x, key_padding_mask=None):
        x = x + self.attn(self.norm1(x), key_padding_mask)
        return x + self.mlp(self.norm2(x))


class SiT(nn.Module):
    """Encoder + light decoder. ``attention`` ("ref" | "sdpa" | "triton") is fixed here, for every block."""

    def __init__(self, cfg: ModelConfig, attention: str = "ref"):
        super().__init__()
        self.cfg = cfg
        self.attention = check_impl(attention)
        # Activation checkpointing of the encoder blocks (the trainer's train.act_ckpt): each block keeps
        # only its input for the backward and recomputes the rest, trading ~1/3 more encoder FLOPs for memory.
        self.checkpoint_blocks = False
        L, P, D, Dd = cfg.n_leads, cfg.n_patches, cfg.dim, cfg.dec_dim
        self.patch_embed = PatchEmbed(cfg)
        self.register_buffer("pos", sincos_table(P + 2, D), persistent=False)  # SEP at 0 and P + 1
        self.lead_embed = nn.Parameter(torch.zeros(L, D))
        self.sep_token = nn.Parameter(torch.zeros(D))
        self.blocks = nn.ModuleList(
            Block(D, cfg.heads, cfg.mlp_hidden, cfg, attention) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(D, eps=cfg.norm_eps)

        self.decoder_embed = nn.Linear(D, Dd)
        self.mask_token = nn.Parameter(torch.zeros(Dd))
        self.register_buffer("dec_pos", sincos_table(P + 2, Dd), persistent=False)
        self.dec_lead_embed = nn.Parameter(torch.zeros(L, Dd))
        self.dec_blocks = nn.ModuleList(
            Block(Dd, cfg.dec_heads, cfg.dec_mlp_hidden, cfg, attention) for _ in range(cfg.dec_depth)
        )
        self.dec_norm = nn.LayerNorm(Dd, eps=cfg.norm_eps)
        self.dec_pred = nn.Linear(Dd, cfg.patch)
        self._init_weights()

    def _init_weights(self):
        # MAE's initialisation: xavier-uniform Linears, small normal tokens and embeddings.
        for tensor in (self.lead_embed, self.sep_token, self.mask_token, self.dec_lead_embed):
            nn.init.normal_(tensor, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def patchify(self, signal: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, P, S), C = P * S."""
        b, n_leads, _ = signal.shape
        return signal.reshape(b, n_leads, self.cfg.n_patches, self.cfg.patch)

    def forward_encoder(self, signal, ids_keep, lead_mask):
        """signal (B, L, C), ids_keep (V, B, L, K), lead_mask bool (B, L) ->
        latent (V*B, L*(K+2), D) after the final norm, key padding mask bool (V*B, L*(K+2))."""
        n_views, b, n_leads, n_keep = ids_keep.shape
        P, D = self.cfg.n_patches, self.cfg.dim
        # The patch embedding runs once per ECG and is shared by the views.
        x = self.patch_embed(self.patchify(signal)) + self.pos[1 : P + 1] + self.lead_embed[:, None, :]
        x = torch.gather(x.expand(n_views, b, n_leads, P, D), 3,
                         ids_keep[..., None].expand(n_views, b, n_leads, n_keep, D))
        sep = self.sep_token + self.lead_embed  # (L, D)
        start = (sep + self.pos[0]).to(x.dtype)[:, None, :].expand(n_views, b, n_leads, 1, D)
        end = (sep + self.pos[P + 1]).to(x.dtype)[:, None, :].expand(n_views, b, n_leads, 1, D)
        x = torch.cat([start, x, end], dim=3).reshape(n_views * b, n_leads * (n_keep + 2), D)
        keep = lead_mask[None, :, :, None].expand(n_views, b, n_leads, n_keep + 2)
        keep = keep.reshape(n_views * b, n_leads * (n_keep + 2))
        recompute = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            x = checkpoint(block, x, keep, use_reentrant=False) if recompute else block(x, keep)
        return self.norm(x), keep

    def forward_decoder(self, latent, ids_restore, lead_mask):
        """latent (V*B, L*(K+2), D), ids_restore (V, B, L, P), lead_mask (B, L) -> pred (V, B, L, P, S)."""
        n_views, b, n_leads, P = ids_restore.shape
        Dd = self.cfg.dec_dim
        y = self.decoder_embed(latent).view(n_views, b, n_leads, -1, Dd)
        patches = unshuffle(y[..., 1:-1, :], self.mask_token, ids_restore)  # (V, B, L, P, Dd)
        y = torch.cat([y[..., :1, :], patches, y[..., -1:, :]], dim=3)
        y = y + (self.dec_pos + self.dec_lead_embed[:, None, :]).to(y.dtype)
        y = y.reshape(n_views * b, n_leads * (P + 2), Dd)
        keep = lead_mask[None, :, :, None].expand(n_views, b, n_leads, P + 2).reshape(n_views * b, -1)
        for block in self.dec_blocks:
            y = block(y, keep)
        pred = self.dec_pred(self.dec_norm(y)).view(n_views, b, n_leads, P + 2, -1)
        return pred[..., 1:-1, :]

    def pool(self, latent, lead_mask, n_views):
        """Mean of the patch tokens (not the SEPs) of present leads: (V*B, L*(K+2), D) -> (V, B, D).

        An ECG with no lead present pools to zeros."""
        vb, _, D = latent.shape
        b, n_leads = lead_mask.shape
        x = latent.view(n_views, b, n_leads, -1, D)[..., 1:-1, :]  # (V, B, L, K, D)
        w = lead_mask.to(x.dtype)[None, :, :, None, None]
        total = (x * w).sum(dim=(2, 3))
        count = (w.sum(dim=(2, 3)) * x.shape[3]).clamp_min(1)
        return total / count

    def encode(self, signal, lead_mask=None):
        """Downstream embedding: all patches visible, pooled. signal (B, L, C) -> (B, dim)."""
        b, n_leads, _ = signal.shape
        if lead_mask is None:
            lead_mask = torch.ones(b, n_leads, dtype=torch.bool, device=signal.device)
        P = self.cfg.n_patches
        ids_keep = torch.arange(P, device=signal.device).expand(1, b, n_leads, P)
        latent, _ = self.forward_encoder(signal, ids_keep, lead_mask)
        return self.pool(latent, lead_mask, 1)[0]
