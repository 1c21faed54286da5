"""Configuration of the SiT model and the CR-MAE loss: frozen dataclasses with named presets.

``ModelConfig.preset("tiny" | "small" | "base", **overrides)`` is the one way the rest of the project
builds a model configuration; every derived value (head dims, token counts) is computed here.

Presets (encoder layers x width x heads / decoder layers x width x heads):

=======  =====================  ====================  ========================================
preset   encoder                decoder               meant for
=======  =====================  ====================  ========================================
tiny     2 x 64 x 2 (d 32)      1 x 32 x 1 (d 32)     CPU demos and tests (forward + backward at
                                                      batch 32: about 0.25 s sdpa, 0.45 s ref, on
                                                      one core)
small    12 x 384 x 6 (d 64)    4 x 256 x 8 (d 32)    ViT-S sized encoder
base     12 x 768 x 12 (d 64)   4 x 256 x 8 (d 32)    ViT-B sized encoder (the CREMA scale)
=======  =====================  ====================  ========================================

Head dims are kept in {32, 64, 128}, the ones the Triton attention kernel supports. Each field's meaning
is the string under it: the config reference (``crema-fast pretrain --print-config``) is generated from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from crema_fast.errors import ConfigError

STEMS = ("linear", "conv")
POOLS = ("mean",)


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of the Signal Transformer (SiT) and its heads: a lead is P patches of S samples (default
    30 x 75 = 2250 = 9 s at 250 Hz)."""

    patch: int = 75
    """Samples per patch (S); follows mask.patch unless set."""
    n_leads: int = 12
    """Leads per ECG (the store's 12, in its order)."""
    n_patches: int = 30
    """Patches per lead (P); follows data.crop // mask.patch unless set."""
    dim: int = 64
    """Encoder width."""
    depth: int = 2
    """Encoder layers."""
    heads: int = 2
    """Encoder attention heads (head dim = dim / heads, kept in {32, 64, 128})."""
    dec_dim: int = 32
    """Decoder width."""
    dec_depth: int = 1
    """Decoder layers."""
    dec_heads: int = 1
    """Decoder attention heads."""
    mlp_ratio: float = 4.0
    """Hidden width of each block's MLP as a multiple of the block's width."""
    proj_dim: int = 64
    """Output width of the projection head of the contrastive term (its hidden width is dim)."""
    stem: str = "linear"
    """Patch embedding: "linear" (one Linear over a patch's S samples) or "conv" (two stride-3 1-D
    convolutions then a Linear, per patch, so no sample of a removed patch leaks into a visible one)."""
    stem_channels: int = 16
    """Channels of the "conv" stem."""
    pool: str = "mean"
    """How embeddings and the contrastive term pool tokens: "mean" over the patch tokens (not the
    separators) of present leads."""
    norm_eps: float = 1e-6
    """LayerNorm epsilon."""
    qkv_bias: bool = True
    """Bias on the attention's q/k/v projection."""

    def __post_init__(self) -> None:
        for name in ("patch", "n_leads", "n_patches", "dim", "heads", "dec_dim", "dec_heads",
                     "proj_dim", "stem_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ModelConfig.{name}: expected a positive int, got {value!r}")
        for name in ("depth", "dec_depth"):  # 0 is allowed: tests use it to isolate the plumbing
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"ModelConfig.{name}: expected an int >= 0, got {value!r}")
        if self.dim % self.heads:
            raise ConfigError(f"ModelConfig.dim: expected a multiple of heads={self.heads}, got {self.dim}")
        if self.dec_dim % self.dec_heads:
            raise ConfigError(
                f"ModelConfig.dec_dim: expected a multiple of dec_heads={self.dec_heads}, got {self.dec_dim}"
            )
        if not self.mlp_ratio > 0:
            raise ConfigError(f"ModelConfig.mlp_ratio: expected > 0, got {self.mlp_ratio!r}")
        if self.stem not in STEMS:
            raise ConfigError(f"ModelConfig.stem: expected one of {STEMS}, got {self.stem!r}")
        if self.pool not in POOLS:
            raise ConfigError(f"ModelConfig.pool: expected one of {POOLS}, got {self.pool!r}")

    # Derived values, computed in one place.
    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def dec_head_dim(self) -> int:
        return self.dec_dim // self.dec_heads

    @property
    def signal_length(self) -> int:
        """Samples per lead the model takes (C = P * S)."""
        return self.n_patches * self.patch

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)

    @property
    def dec_mlp_hidden(self) -> int:
        return int(self.dec_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """A named preset ("tiny", "small", "base") with any field overridden."""
        if name not in PRESETS:
            raise ConfigError(f"ModelConfig.preset: expected one of {sorted(PRESETS)}, got {name!r}")
        fields = dict(PRESETS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"ModelConfig.preset: unknown fields {sorted(unknown)}")
        fields.update(overrides)
        return cls(**fields)


PRESETS: dict[str, dict] = {
    "tiny": dict(dim=64, depth=2, heads=2, dec_dim=32, dec_depth=1, dec_heads=1, proj_dim=64),
    "small": dict(dim=384, depth=12, heads=6, dec_dim=256, dec_depth=4, dec_heads=8, proj_dim=128),
    "base": dict(dim=768, depth=12, heads=12, dec_dim=256, dec_depth=4, dec_heads=8, proj_dim=128),
}


@dataclass(frozen=True)
class LossConfig:
    """The CR-MAE loss: ``loss = mean over views of masked MSE + lam * NT-Xent(tau)``.

    lam = 0.1: the reconstruction term stays the main objective. At initialisation the MSE on
    per-patch normalized targets is about 1 and NT-Xent about log(2B - 1) (4.1 at B = 32), so
    lam = 0.1 keeps the contrastive term a regulariser of the same order as the MSE, not the driver.
    tau = 0.2: the temperature MoCo v3 found stable for ViT encoders; 0.1 (SimCLR's large-batch value)
    gives sharper but noisier gradients at the small per-GPU batches this runs with.
    Both lam and tau are our choices, not values read from the CREMA paper: change them here.
    """

    lam: float = 0.1
    """Weight of the NT-Xent term (0 = a plain MAE)."""
    tau: float = 0.2
    """NT-Xent temperature."""
    norm_target: bool = True
    """Reconstruct each patch normalized by its own mean and (population) variance over its S samples
    (MAE's norm_pix_loss); false reconstructs the raw patch."""
    eps: float = 1e-6
    """Added to the variance of the per-patch normalization."""

    def __post_init__(self) -> None:
        if not (isinstance(self.lam, (int, float)) and self.lam >= 0):
            raise ConfigError(f"LossConfig.lam: expected a number >= 0, got {self.lam!r}")
        if not (isinstance(self.tau, (int, float)) and self.tau > 0):
            raise ConfigError(f"LossConfig.tau: expected a number > 0, got {self.tau!r}")
        if not (isinstance(self.eps, (int, float)) and self.eps > 0):
            raise ConfigError(f"LossConfig.eps: expected a number > 0, got {self.eps!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
