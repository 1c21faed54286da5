"""crema_fast/train/memory.py: the training-memory estimate behind --dry-run's largest batch, by hand."""

from types import SimpleNamespace

from crema_fast.model import ModelConfig
from crema_fast.train.config import build_config
from crema_fast.train.memory import HEADROOM, RESERVED, estimate, report


def _small(attention="sdpa"):
    """12 leads x 4 patches of 10 samples, K = 2 kept; dim 32 (MLP 128), depth 2; decoder 16 wide (MLP 64),
    depth 1; heads 2 and 1. Only the fields the estimate reads (a whole RunConfig ties patch to the data)."""
    model = ModelConfig.preset("tiny", patch=10, n_patches=4, dim=32, depth=2, heads=2, dec_dim=16, dec_depth=1,
                               dec_heads=1, mlp_ratio=4.0)
    return SimpleNamespace(model=model, mask=SimpleNamespace(n_keep=lambda p: 2),
                           train=SimpleNamespace(act_ckpt=False, attention=attention))


def test_estimate_by_hand():
    cfg = _small()
    assert cfg.model.mlp_hidden == 128 and cfg.model.dec_mlp_hidden == 64
    est = estimate(cfg, n_params=1000)
    assert est.static == 16_000 and est.transient == 0
    ne, nd = 12 * 4, 12 * 6  # L*(K+2), L*(P+2)
    enc = 2 * ne * (8 * 32 + 6 * 2 * 32 + 2 * 2 * 128)  # depth 2, e = 2
    dec = 1 * nd * (8 * 16 + 6 * 2 * 16 + 2 * 2 * 64)
    io = 12 * 4 * 10 * (4 + 8 + 4)
    assert est.per_ecg == 2 * (enc + dec) + io


def test_checkpointing_and_ref_attention_terms():
    cfg = _small()
    ckpt = estimate(cfg, 1000, act_ckpt=True)
    ne = 48
    assert ckpt.transient == 2 * ne * (8 * 32 + 6 * 2 * 32 + 2 * 2 * 128)  # one block, both views
    assert ckpt.per_ecg == estimate(cfg, 1000).per_ecg - 2 * (2 * ne * (8 * 32 + 12 * 32 + 512) - 2 * 4 * 32 * ne)
    ref = estimate(_small("ref"), 1000)
    # scores and probabilities in fp32, per block and view: encoder 2 blocks (2 heads), decoder 1 (1 head)
    extra = 2 * (2 * 2 * 4 * 2 * ne * ne + 1 * 2 * 4 * 1 * 72 * 72)
    assert ref.per_ecg - estimate(cfg, 1000).per_ecg == extra


def test_largest_batch_fits_and_one_more_does_not():
    cfg = build_config("base")
    for ckpt in (False, True):
        est = estimate(cfg, 89_192_395, act_ckpt=ckpt)
        gib80 = 80 * 2**30
        b = est.largest_batch(gib80)
        budget = HEADROOM * gib80 - RESERVED
        assert b > 256 and est.total(b) <= budget < est.total(b + 1)
    assert estimate(cfg, 89_192_395, act_ckpt=True).largest_batch(gib80) > 2 * estimate(cfg, 89_192_395).largest_batch(gib80)
    assert estimate(cfg, 10**12).largest_batch(gib80) == 0  # weights alone do not fit


def test_report_names_each_device():
    lines = report(build_config("base"), 89_192_395)
    assert lines[0].startswith("memory estimate") and "MiB per ECG" in lines[0]
    assert any(line.strip().startswith("H100 80GB") for line in lines)
    assert any(line.strip().startswith("H200 141GB") for line in lines)
