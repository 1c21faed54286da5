"""CremaModel: the SiT, its projection head and the CR-MAE loss, behind the switches fixed at construction.

    m = CremaModel(ModelConfig.preset("tiny"), LossConfig(), attention="sdpa")
    out = m(batch.signal, batch.ids_keep, batch.mask, batch.ids_restore, batch.lead_mask)
    out.loss.backward()

``m.attention`` ("ref" | "sdpa" | "triton") and ``m.loss_impl`` ("ref" | "triton") say which path runs.
"triton" is checked when the model is built: a missing kernel is a ConfigError there, never a silent
fallback to another path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn as nn

from crema_fast.errors import ConfigError
from crema_fast.model.config import LossConfig, ModelConfig
from crema_fast.model import loss as loss_switch
from crema_fast.model.sit import SiT, conv_stem_lengths

LOSS_IMPLS = loss_switch.IMPLS
DEFAULT_MASK_RATIO = 0.75  # only used by flops_per_ecg when no K is given (the loader's default)


@dataclass
class CremaOutput:
    """loss, mse, nce: 0-dim fp32. pred (2, B, 12, P, S) in the normalized target space when norm_target
    (else raw samples); patches (B, 12, P, S) the raw patches. ``target`` (B, 12, P, S) fp32 is computed
    on first use (plots, tests), never by the loss: the Triton loss normalizes inside its kernel."""

    loss: torch.Tensor
    mse: torch.Tensor
    nce: torch.Tensor
    pred: torch.Tensor
    patches: torch.Tensor
    norm_target: bool = True
    eps: float = 1e-6

    @cached_property
    def target(self) -> torch.Tensor:
        if self.norm_target:
            return loss_switch.normalize_patches(self.patches, self.eps)
        return self.patches.float()


class CremaModel(nn.Module):
    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig | None = None,
                 attention: str = "ref", loss: str = "ref"):
        super().__init__()
        if not isinstance(model_cfg, ModelConfig):
            raise TypeError(f"CremaModel: model_cfg expected ModelConfig, got {type(model_cfg).__name__}")
        loss_cfg = LossConfig() if loss_cfg is None else loss_cfg
        if not isinstance(loss_cfg, LossConfig):
            raise TypeError(f"CremaModel: loss_cfg expected LossConfig, got {type(loss_cfg).__name__}")
        if loss not in LOSS_IMPLS:
            raise ConfigError(f"CremaModel: loss expected one of {LOSS_IMPLS}, got {loss!r}")
        self.model_cfg, self.loss_cfg = model_cfg, loss_cfg
        self.sit = SiT(model_cfg, attention)  # checks the attention switch first: its error names attention
        loss_switch.check_impl(loss)
        self.attention = self.sit.attention
        self.loss_impl = loss
        D = model_cfg.dim
        self.proj = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, model_cfg.proj_dim))
        for m in self.proj:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------------------------------------
    def patchify(self, signal: torch.Tensor) -> torch.Tensor:
        """(B, 12, C) -> (B, 12, P, S)."""
        return self.sit.patchify(signal)

    def forward(self, signal, ids_keep, mask, ids_restore, lead_mask=None) -> CremaOutput:
        """signal float (B, 12, C); ids_keep int64 (2, B, 12, K); mask float (2, B, 12, P), 1 = removed;
        ids_restore int64 (2, B, 12, P); lead_mask bool (B, 12) or None (all present)."""
        lead_mask = self._validate(signal, ids_keep, mask, ids_restore, lead_mask)
        patches = self.patchify(signal)
        latent, _ = self.sit.forward_encoder(signal, ids_keep, lead_mask)
        pred = self.sit.forward_decoder(latent, ids_restore, lead_mask)
        z = self.proj(self.sit.pool(latent, lead_mask, n_views=2))  # (2, B, proj_dim)
        loss, mse, nce = self.forward_loss(pred, patches, mask, lead_mask, z)
        return CremaOutput(loss, mse, nce, pred, patches, self.loss_cfg.norm_target, self.loss_cfg.eps)

    def forward_loss(self, pred, patches, mask, lead_mask, z):
        """The CR-MAE loss (loss.py) on the raw patches (B, 12, P, S); z (2, B, E) the two views' projections."""
        c = self.loss_cfg
        return loss_switch.cr_mae_loss(pred, patches, mask, lead_mask, z[0], z[1], c.lam, c.tau, c.eps,
                                       c.norm_target, impl=self.loss_impl)

    @torch.no_grad()
    def encode(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen-encoder embedding: all patches visible, mean over patch tokens of present leads.
        signal float (B, 12, C), lead_mask bool (B, 12) or None -> (B, dim)."""
        self._check_signal(signal)
        if lead_mask is not None:
            self._check_lead_mask(lead_mask, signal.shape[0])
        return self.sit.encode(signal, lead_mask)

    def num_params(self) -> int:
        """Number of parameters (the sin-cos position tables are buffers, not counted)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_ecg(self, n_keep: int | None = None) -> float:
        """Forward FLOPs of one ECG, both views, from the shapes; a training step is about 3x this.

        Counted: matmuls at 2*m*n*k. With L leads, P patches of S samples, K kept per lead, encoder
        width D, depth E, MLP hidden H = mlp_ratio*D, tokens Ne = L*(K+2); decoder Dd, Ed, Hd and
        Nd = L*(P+2) tokens; projection width E' = proj_dim:
          patch embedding (once, shared by the views): 2*L*P*S*D (linear stem; the conv stem counts its
              two convolutions and its Linear instead)
          per view:
            encoder  E  * [2*Ne*D*(3D + D + 2H) + 4*Ne^2*D]   (qkv, out proj, MLP; QK^T and PV)
            decoder  2*Ne*D*Dd + Ed * [2*Nd*Dd*(3Dd + Dd + 2Hd) + 4*Nd^2*Dd] + 2*Nd*Dd*S
            head     2*D*D + 2*D*E'
        Norms, softmax, GELU and the loss (its 2B x 2N similarity: 2*2B*2N*E' per step) are not
        counted. Key-padded leads are counted: the kernels do that work too.
        n_keep: K, patches kept per lead (default P - round(0.75 * P), the loader's default mask ratio).
        """
        c = self.model_cfg
        L, P, S = c.n_leads, c.n_patches, c.patch
        K = P - round(DEFAULT_MASK_RATIO * P) if n_keep is None else int(n_keep)
        D, H, Dd, Hd = c.dim, c.mlp_hidden, c.dec_dim, c.dec_mlp_hidden
        ne, nd = L * (K + 2), L * (P + 2)
        if c.stem == "linear":
            embed = 2 * L * P * S * D
        else:
            ch = c.stem_channels
            l1, l2 = conv_stem_lengths(S)
            embed = L * P * (2 * l1 * ch * 9 + 2 * l2 * ch * ch * 9 + 2 * ch * l2 * D)
        enc = c.depth * (2 * ne * D * (4 * D + 2 * H) + 4 * ne * ne * D)
        dec = 2 * ne * D * Dd + c.dec_depth * (2 * nd * Dd * (4 * Dd + 2 * Hd) + 4 * nd * nd * Dd)
        dec += 2 * nd * Dd * S
        head = 2 * D * D + 2 * D * c.proj_dim
        return float(embed + 2 * (enc + dec + head))

    # ----------------------------------------------------------------------------------------------
    def _check_signal(self, signal):
        c = self.model_cfg
        if not isinstance(signal, torch.Tensor):
            raise TypeError(f"signal: expected a torch.Tensor, got {type(signal).__name__}")
        if not signal.is_floating_point():
            raise TypeError(f"signal: expected a floating dtype (float32), got {signal.dtype}")
        if signal.dim() != 3 or signal.shape[1] != c.n_leads or signal.shape[2] != c.signal_length:
            raise ValueError(
                f"signal: expected shape (B, {c.n_leads}, {c.signal_length}) "
                f"({c.n_patches} patches x {c.patch} samples), got {tuple(signal.shape)}"
            )

    def _check_lead_mask(self, lead_mask, b):
        if not isinstance(lead_mask, torch.Tensor) or lead_mask.dtype != torch.bool:
            got = lead_mask.dtype if isinstance(lead_mask, torch.Tensor) else type(lead_mask).__name__
            raise TypeError(f"lead_mask: expected a torch.bool tensor, got {got}")
        if tuple(lead_mask.shape) != (b, self.model_cfg.n_leads):
            raise ValueError(
                f"lead_mask: expected shape {(b, self.model_cfg.n_leads)}, got {tuple(lead_mask.shape)}"
            )

    def _validate(self, signal, ids_keep, mask, ids_restore, lead_mask):
        """Shapes and dtypes only: no value check, so no host synchronisation."""
        c = self.model_cfg
        self._check_signal(signal)
        b, L, P = signal.shape[0], c.n_leads, c.n_patches
        for name, t, floating in (("ids_keep", ids_keep, False), ("mask", mask, True),
                                  ("ids_restore", ids_restore, False)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
            if floating and not t.is_floating_point():
                raise TypeError(f"{name}: expected a floating dtype (float32), got {t.dtype}")
            if not floating and t.dtype != torch.int64:
                raise TypeError(f"{name}: expected torch.int64, got {t.dtype}")
        if ids_keep.dim() != 4 or tuple(ids_keep.shape[:3]) != (2, b, L) or not 1 <= ids_keep.shape[3] <= P:
            raise ValueError(f"ids_keep: expected shape (2, {b}, {L}, K) with 1 <= K <= {P}, "
                             f"got {tuple(ids_keep.shape)}")
        for name, t in (("mask", mask), ("ids_restore", ids_restore)):
            if tuple(t.shape) != (2, b, L, P):
                raise ValueError(f"{name}: expected shape {(2, b, L, P)}, got {tuple(t.shape)}")
        if lead_mask is None:
            return torch.ones(b, L, dtype=torch.bool, device=signal.device)
        self._check_lead_mask(lead_mask, b)
        return lead_mask
