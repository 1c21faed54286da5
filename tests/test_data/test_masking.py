"""Masking invariants: counts, inverse permutation, the MAE convention, views, seeding, uniformity."""

import numpy as np
import pytest
from scipy import stats

from crema_fast.data.config import MaskConfig
from crema_fast.data.masking import make_masks, make_views
from crema_fast.errors import ConfigError

MODES = ("lead", "time", "block")


def _check_invariants(ids_keep, mask, ids_restore, K, P):
    B, L = mask.shape[:2]
    assert ids_keep.shape == (B, L, K) and mask.shape == ids_restore.shape == (B, L, P)
    assert ids_keep.dtype == ids_restore.dtype == np.int64 and mask.dtype == np.float32
    assert np.all((mask == 0) | (mask == 1))
    assert np.all(mask.sum(-1) == P - K)  # every lead keeps exactly K
    # 1 = removed: the kept positions are exactly the zeros of the mask
    kept = np.zeros_like(mask, dtype=bool)
    np.put_along_axis(kept, ids_keep, True, axis=-1)
    np.testing.assert_array_equal(kept, mask == 0)
    # ids_restore inverts the shuffle [kept, removed]: gathering restores time order (MAE's unshuffle)
    removed = np.argsort(mask, axis=-1, kind="stable")[..., K:]
    shuffle = np.concatenate([ids_keep, removed], axis=-1)
    assert np.all(np.sort(shuffle, axis=-1) == np.arange(P))
    np.testing.assert_array_equal(np.take_along_axis(shuffle, ids_restore, axis=-1),
                                  np.broadcast_to(np.arange(P), (B, L, P)))
    assert np.all(np.diff(ids_keep, axis=-1) > 0)  # kept ascending in time


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ratio,P", [(0.75, 30), (0.5, 7), (0.9, 10), (0.0, 5)])
def test_invariants(mode, ratio, P):
    cfg = MaskConfig(ratio=ratio, mode=mode)
    K = P - round(ratio * P)
    _check_invariants(*make_masks(np.random.default_rng(0), 16, 12, P, cfg), K, P)


def test_default_counts():
    cfg = MaskConfig()
    P = cfg.n_patches(2250)
    assert (P, cfg.n_keep(P)) == (30, 8)  # 30 - round(22.5) = 8 (round half to even)


def test_modes_structure():
    rng = np.random.default_rng(1)
    k, m, _ = make_masks(rng, 64, 12, 30, MaskConfig(mode="time"))
    assert np.all(m == m[:, :1])  # one pattern per record, all leads
    k, m, _ = make_masks(rng, 64, 12, 30, MaskConfig(mode="block"))
    removed = np.argsort(m, axis=-1, kind="stable")[..., 8:]  # the 22 removed positions, ascending
    assert np.all(np.diff(removed, axis=-1) == 1)  # one contiguous removed block per lead
    assert np.mean(np.all(m == m[:, :1], axis=(1, 2))) < 0.01  # at independent starts per lead
    k, m, _ = make_masks(rng, 64, 12, 30, MaskConfig(mode="lead"))
    assert np.mean(np.all(m == m[:, :1], axis=(1, 2))) < 0.01  # leads differ


def test_block_start_uniform():
    # the removed block of P - K = 22 patches starts at 0..K = 0..8, each equally likely (chi-square)
    P, cfg = 30, MaskConfig(mode="block")
    K = cfg.n_keep(P)
    _, mask, _ = make_masks(np.random.default_rng(12), 4000, 12, P, cfg)
    starts = np.argmax(mask == 1, axis=-1)
    np.testing.assert_array_equal(mask.sum(-1), P - K)
    q = np.arange(P)
    expected_mask = (q >= starts[..., None]) & (q < starts[..., None] + P - K)  # exactly that block removed
    np.testing.assert_array_equal(mask, expected_mask.astype(np.float32))
    counts = np.bincount(starts.ravel(), minlength=K + 1).astype(float)
    assert len(counts) == K + 1
    expected = np.full(K + 1, counts.sum() / (K + 1))
    assert stats.chi2.sf(((counts - expected) ** 2 / expected).sum(), df=K) > 1e-4


def test_two_views_differ_and_are_seeded():
    cfg = MaskConfig()
    v = make_views(np.random.default_rng(5), 32, 12, 30, cfg)
    w = make_views(np.random.default_rng(5), 32, 12, 30, cfg)
    for a, b in zip(v, w):
        np.testing.assert_array_equal(a, b)
    ids_keep, mask, ids_restore = v
    assert ids_keep.shape == (2, 32, 12, 8) and mask.shape == ids_restore.shape == (2, 32, 12, 30)
    for i in range(2):
        _check_invariants(ids_keep[i], mask[i], ids_restore[i], 8, 30)
    # independent views: the same lead's masks agree only by chance (1 / C(30, 8) per lead)
    assert np.mean(np.all(mask[0] == mask[1], axis=-1)) < 0.01
    # make_views draws what successive make_masks calls on the same generator draw
    rng = np.random.default_rng(5)
    np.testing.assert_array_equal(make_masks(rng, 32, 12, 30, cfg)[1], mask[0])
    np.testing.assert_array_equal(make_masks(rng, 32, 12, 30, cfg)[1], mask[1])
    assert not np.array_equal(make_views(6, 32, 12, 30, cfg)[1], mask)


@pytest.mark.parametrize("mode", ["lead", "time"])
def test_every_patch_equally_likely_to_be_kept(mode):
    # 20,000 draws x 12 leads: kept counts per patch position against the uniform K/P, chi-square test
    P, cfg = 30, MaskConfig(mode=mode)
    K = cfg.n_keep(P)
    _, mask, _ = make_masks(np.random.default_rng(11), 20_000, 12, P, cfg)
    kept = (mask == 0)[:, :1 if mode == "time" else 12]
    counts = kept.sum(axis=(0, 1)).astype(float)
    expected = np.full(P, counts.sum() / P)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=P - 1) > 1e-4
    assert abs(counts.sum() - kept.shape[0] * kept.shape[1] * K) == 0
    # pairs too: the partial Fisher-Yates draws every K-subset equally likely, so P(i and j kept) is flat
    pair = np.einsum("nli,nlj->ij", kept[:5000].astype(np.float32), kept[:5000].astype(np.float32))
    off = pair[~np.eye(P, dtype=bool)]
    n = kept[:5000].shape[0] * kept.shape[1]
    p_pair = K * (K - 1) / (P * (P - 1))
    assert np.abs(off / n - p_pair).max() < 6 * np.sqrt(p_pair * (1 - p_pair) / n)


def test_config_errors():
    with pytest.raises(ConfigError, match="no visible patch"):
        make_masks(0, 2, 12, 3, MaskConfig(ratio=0.9))  # 3 - round(2.7) = 0
    with pytest.raises(ConfigError, match="multiple"):
        MaskConfig().n_patches(2200)
    with pytest.raises(ConfigError, match="multiple"):
        MaskConfig(patch=75).n_patches(50)
    for kw in (dict(ratio=1.0), dict(ratio=-0.1), dict(patch=0), dict(mode="random")):
        with pytest.raises(ConfigError):
            MaskConfig(**kw)
    with pytest.raises(ValueError, match="batch"):
        make_masks(0, -1, 12, 30, MaskConfig())
