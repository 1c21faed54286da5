"""Small models and batches for the model tests. Masks come from crema_fast.model.random_masking (torch,
MAE style), not from crema_fast.data, so these tests stand alone."""

import pytest
import torch

from crema_fast.model import CremaModel, LossConfig, ModelConfig, random_masking

# Small shapes keep the suite fast: 4 leads would break the 12-lead contract, so keep 12 leads but
# few, short patches.
SMALL = dict(patch=8, n_patches=6, dim=32, depth=2, heads=1, dec_dim=32, dec_depth=1, dec_heads=1,
             proj_dim=16)


def make_batch(cfg: ModelConfig, b=3, n_keep=2, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    signal = torch.randn(b, cfg.n_leads, cfg.signal_length, generator=g, dtype=dtype)
    ids_keep, mask, ids_restore = random_masking(2, b, cfg.n_leads, cfg.n_patches, n_keep, generator=g)
    lead_mask = torch.ones(b, cfg.n_leads, dtype=torch.bool)
    return signal, ids_keep, mask, ids_restore, lead_mask


@pytest.fixture
def small_cfg():
    return ModelConfig(**SMALL)


def build(cfg, attention="ref", seed=0, dtype=torch.float32, **loss):
    torch.manual_seed(seed)
    return CremaModel(cfg, LossConfig(**loss), attention=attention).to(dtype)
