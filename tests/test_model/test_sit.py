"""The SiT: shapes, what the encoder sees, the decoder's unshuffle, absent leads, counts, validation."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from crema_fast.errors import ConfigError
from crema_fast.model import CremaModel, ModelConfig, random_masking
from crema_fast.model.sit import unshuffle

from .conftest import build, make_batch


def test_random_masking_contract():
    g = torch.Generator().manual_seed(1)
    ids_keep, mask, ids_restore = random_masking(2, 3, 12, 30, 8, generator=g)
    assert ids_keep.shape == (2, 3, 12, 8) and mask.shape == ids_restore.shape == (2, 3, 12, 30)
    assert torch.all(mask.sum(-1) == 22)
    assert torch.all(torch.gather(mask, -1, ids_keep) == 0)
    # ids_restore inverts the shuffle whose first K entries are ids_keep
    shuffled_pos_of_kept = torch.gather(ids_restore, -1, ids_keep)
    assert torch.equal(shuffled_pos_of_kept, torch.arange(8).expand_as(ids_keep))


def test_unshuffle_puts_patches_back_in_time_order():
    g = torch.Generator().manual_seed(2)
    ids_keep, mask, ids_restore = random_masking(2, 3, 12, 10, 4, generator=g)
    visible = ids_keep.float()[..., None].expand(*ids_keep.shape, 5)  # each token carries its patch index
    out = unshuffle(visible, torch.full((5,), -1.0), ids_restore)
    expected = torch.where(mask.bool(), torch.tensor(-1.0), torch.arange(10.0).expand_as(mask))
    assert torch.equal(out, expected[..., None].expand(*mask.shape, 5))


def test_shapes_and_normalized_target(small_cfg):
    m = build(small_cfg)
    batch = make_batch(small_cfg, b=3)
    out = m(*batch)
    P, S = small_cfg.n_patches, small_cfg.patch
    assert out.pred.shape == (2, 3, 12, P, S) and out.target.shape == (3, 12, P, S)
    assert out.loss.shape == out.mse.shape == out.nce.shape == ()
    assert torch.allclose(out.target.mean(-1), torch.zeros(()), atol=1e-5)
    assert torch.allclose(out.target.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
    assert torch.allclose(out.loss, out.mse + m.loss_cfg.lam * out.nce)
    assert m.encode(batch[0], batch[4]).shape == (3, small_cfg.dim)


@pytest.mark.parametrize("stem", ["linear", "conv"])
def test_encoder_sees_only_visible_patches(small_cfg, stem):
    cfg = ModelConfig(**{**small_cfg.to_dict(), "stem": stem, "patch": 15})
    m = build(cfg)
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(cfg, b=2)
    removed0 = mask[0].bool()[..., None].expand(2, 12, cfg.n_patches, cfg.patch).reshape(signal.shape)
    changed = torch.where(removed0, signal + 5.0 * torch.randn_like(signal), signal)
    lat_a, _ = m.sit.forward_encoder(signal, ids_keep, lead_mask)
    lat_b, _ = m.sit.forward_encoder(changed, ids_keep, lead_mask)
    # view 0 never sees its removed patches; view 1 sees some of them, so it must change
    assert torch.allclose(lat_a[:2], lat_b[:2], atol=1e-6, rtol=0)
    assert not torch.allclose(lat_a[2:], lat_b[2:], atol=1e-3)


def test_decoder_restores_order_whatever_the_order_of_kept_ids(small_cfg):
    """Attention is permutation-equivariant and positions are added before the gather, so listing a
    lead's kept patches in another order (with ids_restore to match) must give the same prediction."""
    m = build(small_cfg)
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(small_cfg, b=2, n_keep=3)
    g = torch.Generator().manual_seed(5)
    perm = torch.rand(ids_keep.shape, generator=g).argsort(-1)
    keep2 = torch.gather(ids_keep, -1, perm)
    removed = ids_restore.argsort(-1)[..., ids_keep.shape[-1]:]  # the shuffle's tail: removed patches
    restore2 = torch.cat([keep2, removed], -1).argsort(-1)
    out1 = m(signal, ids_keep, mask, ids_restore, lead_mask)
    out2 = m(signal, keep2, mask, restore2, lead_mask)
    assert torch.allclose(out1.pred, out2.pred, atol=1e-5)
    assert torch.allclose(out1.loss, out2.loss, atol=1e-6)


def test_without_blocks_each_prediction_depends_on_its_own_patch(small_cfg):
    """depth 0, dec_depth 0: the model is per token, so changing one visible patch moves exactly that
    patch's prediction, in the right lead and at the right time position."""
    cfg = ModelConfig(**{**small_cfg.to_dict(), "depth": 0, "dec_depth": 0})
    m = build(cfg)
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(cfg, b=2)
    b, lead = 1, 7
    p = int(ids_keep[0, b, lead, 1])
    changed = signal.clone()
    changed[b, lead, p * cfg.patch:(p + 1) * cfg.patch] += 3.0
    diff = (m(changed, ids_keep, mask, ids_restore, lead_mask).pred
            - m(signal, ids_keep, mask, ids_restore, lead_mask).pred).abs().amax(-1)
    moved = diff[0] > 1e-6
    assert moved[b, lead, p] and moved.sum() == 1


def test_absent_leads_do_not_affect_present_leads(small_cfg):
    m = build(small_cfg)
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(small_cfg, b=3)
    lead_mask[0, [2, 5, 11]] = False
    lead_mask[2, :6] = False
    changed = torch.where(lead_mask[..., None], signal, torch.randn_like(signal) * 10)
    out1 = m(signal, ids_keep, mask, ids_restore, lead_mask)
    out2 = m(changed, ids_keep, mask, ids_restore, lead_mask)
    present = lead_mask[None, :, :, None, None].expand_as(out1.pred)
    assert torch.allclose(out1.pred[present], out2.pred[present], atol=1e-5)
    assert torch.allclose(out1.loss, out2.loss, atol=1e-6)
    assert torch.allclose(m.encode(signal, lead_mask), m.encode(changed, lead_mask), atol=1e-5)


def test_an_ecg_with_no_lead_stays_finite(small_cfg):
    m = build(small_cfg)
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(small_cfg, b=3)
    lead_mask[1] = False
    out = m(signal, ids_keep, mask, ids_restore, lead_mask)
    out.loss.backward()
    assert torch.isfinite(out.pred).all() and torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_flops_per_ecg_matches_pytorch_flop_counter(small_cfg):
    for stem in ("linear", "conv"):
        cfg = ModelConfig(**{**small_cfg.to_dict(), "stem": stem, "patch": 15})
        m = build(cfg)
        batch = make_batch(cfg, b=2, n_keep=2)
        with FlopCounterMode(display=False) as counter:
            m(*batch)
        similarity = 2 * 4 * 4 * cfg.proj_dim  # the loss's (2B x E) @ (E x 2B), not part of the count
        assert counter.get_total_flops() == 2 * m.flops_per_ecg(n_keep=2) + similarity


def test_num_params_matches_hand_count():
    cfg = ModelConfig.preset("base")
    D, Dd, S, L, E = 768, 256, 75, 12, 128
    block = lambda d: 12 * d * d + 13 * d  # noqa: E731  qkv, out proj, MLP (4x), two LayerNorms
    encoder = (S * D + D) + L * D + D + 12 * block(D) + 2 * D  # patch embed, leads, SEP, blocks, norm
    decoder = (D * Dd + Dd) + Dd + L * Dd + 4 * block(Dd) + 2 * Dd + (Dd * S + S)
    head = (D * D + D) + (D * E + E)
    assert CremaModel(cfg).num_params() == encoder + decoder + head
    assert cfg.head_dim == 64 and cfg.dec_head_dim == 32


def test_presets_and_config_errors():
    assert ModelConfig.preset("tiny", depth=1).depth == 1
    with pytest.raises(ConfigError, match="preset"):
        ModelConfig.preset("huge")
    with pytest.raises(ConfigError, match="dim"):
        ModelConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="stem"):
        ModelConfig(stem="fft")


def test_input_validation_names_the_argument(small_cfg):
    m = build(small_cfg)
    signal, ids_keep, mask, ids_restore, lead_mask = make_batch(small_cfg, b=2)
    cases = [
        (TypeError, "ids_keep", (signal, ids_keep.int(), mask, ids_restore, lead_mask)),
        (TypeError, "signal", (signal.long(), ids_keep, mask, ids_restore, lead_mask)),
        (TypeError, "lead_mask", (signal, ids_keep, mask, ids_restore, lead_mask.float())),
        (TypeError, "mask", (signal, ids_keep, mask.bool(), ids_restore, lead_mask)),
        (ValueError, "signal", (signal[..., :-1], ids_keep, mask, ids_restore, lead_mask)),
        (ValueError, "ids_keep", (signal, ids_keep[:1], mask, ids_restore, lead_mask)),
        (ValueError, "ids_restore", (signal, ids_keep, mask, ids_restore[..., :-1], lead_mask)),
        (ValueError, "mask", (signal, ids_keep, mask[:, :1], ids_restore, lead_mask)),
        (ValueError, "lead_mask", (signal, ids_keep, mask, ids_restore, lead_mask[:, :6])),
    ]
    for exc, name, args in cases:
        with pytest.raises(exc, match=rf"^{name}: expected .*got"):
            m(*args)
