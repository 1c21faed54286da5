"""The batch pipeline (crema_fast.data.preprocess) against scipy doing the same steps in the same order."""

import numpy as np
import pytest
from scipy import signal as sps

from crema_fast.data import filters, resample
from crema_fast.data.config import DataConfig
from crema_fast.data.preprocess import FLAT_STD, crop_starts, model_lengths, preprocess
from crema_fast.errors import ConfigError
from tests.test_data.tolerances import TOL_ULP, ulp_error


def scipy_pipeline(x, lead_mask, valid, rate, cfg, starts):
    """Per record, float64: resample_poly -> sosfiltfilt -> crop -> z-score over present leads."""
    up, down = resample.ratio(rate, cfg.model_rate)
    sos = filters.design_sos(cfg.model_rate, cfg.highpass, cfg.lowpass, cfg.filter_order, cfg.notch, cfg.notch_q)
    out = np.zeros((len(x), 12, cfg.crop))
    for b in range(len(x)):
        v = x[b, :, :valid[b]].astype(np.float64)
        if (up, down) != (1, 1):
            v = sps.resample_poly(v, up, down, axis=-1)
        v = sps.sosfiltfilt(sos, v, axis=-1)
        seg = v[:, starts[b]:starts[b] + cfg.crop]
        m = seg.shape[1]
        keep = lead_mask[b]
        if cfg.zscore == "record":
            seg = np.where(keep[:, None], (seg - seg[keep].mean()) / seg[keep].std(), 0.0)
        else:
            with np.errstate(invalid="ignore", divide="ignore"):  # absent (all-zero) leads: 0 / 0
                seg = (seg - seg.mean(axis=1, keepdims=True)) / seg.std(axis=1, keepdims=True)
            seg[~keep] = 0.0
        out[b, :, :m] = seg
    return out


def _inputs(ptbxl500, n, rate=500):
    x = ptbxl500[:n] if rate == 500 else np.round(
        sps.resample_poly(ptbxl500[:n].astype(np.float64), 1, 2, axis=-1)).astype(np.int16)
    return x, np.ones((n, 12), bool), np.full(n, x.shape[-1], np.int32)


@pytest.mark.parametrize("rate,cfg", [
    (500, DataConfig(precision="float64")),
    (500, DataConfig()),  # float32 state: ~scipy float32's own error (tolerances.py)
    (250, DataConfig(precision="float64")),  # store at the model rate: no resampling
    (500, DataConfig(precision="float64", zscore="lead", notch=50)),
])
def test_matches_scipy_pipeline(ptbxl500, rate, cfg):
    x, lm, valid = _inputs(ptbxl500, 20, rate)
    n_model = model_lengths(valid, rate, cfg.model_rate, x.shape[-1])
    starts = crop_starts(n_model, cfg.crop, np.random.default_rng(3), train=True)
    ours = preprocess(x, lm, valid, rate, cfg, starts=starts)
    ref = scipy_pipeline(x, lm, valid, rate, cfg, starts)
    assert ours.dtype == np.float32 and ours.shape == (20, 12, cfg.crop)
    assert ulp_error(ours, ref) <= TOL_ULP["pipeline" if cfg.precision == "float64" else "pipeline_f32state"]


def test_random_crop_seeded_and_centre_crop_for_eval(ptbxl500):
    x, lm, valid = _inputs(ptbxl500, 8)
    cfg = DataConfig()
    a = preprocess(x, lm, valid, 500, cfg, rng=np.random.default_rng(7))
    b = preprocess(x, lm, valid, 500, cfg, rng=np.random.default_rng(7))
    c = preprocess(x, lm, valid, 500, cfg, rng=np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    starts = crop_starts(np.full(10_000, 2500), 2250, np.random.default_rng(0), train=True)
    assert starts.min() == 0 and starts.max() == 250  # the whole range [0, n - crop], inclusive
    np.testing.assert_array_equal(crop_starts(np.array([2500, 2250, 1000]), 2250, None, train=False), [125, 0, 0])
    ev = preprocess(x, lm, valid, 500, cfg, train=False)
    np.testing.assert_array_equal(ev, preprocess(x, lm, valid, 500, cfg, starts=np.full(8, 125)))


def test_absent_leads_stay_zero_and_do_not_count(ptbxl500):
    x, lm, valid = _inputs(ptbxl500, 6)
    x = x.copy()
    lm[0, 6:] = False  # limb leads only
    lm[1, [0, 2, 5]] = False
    lm[2, 1:] = False  # one lead
    x[~lm] = 0  # as the store writes absent leads
    for zscore in ("record", "lead"):
        cfg = DataConfig(precision="float64", zscore=zscore)
        ours = preprocess(x, lm, valid, 500, cfg, train=False)
        assert np.all(ours[~lm] == 0)
        ref = scipy_pipeline(x, lm, valid, 500, cfg, np.full(6, 125))
        assert ulp_error(ours, ref) <= TOL_ULP["pipeline"]
    # a lead the store holds but the mask calls absent is zeroed too
    x2 = ptbxl500[:1]
    out = preprocess(x2, np.array([[True] * 11 + [False]]), np.array([5000]), 500, DataConfig(), train=False)
    assert np.all(out[0, 11] == 0)


def test_flat_and_zero_leads_are_finite(ptbxl500):
    x, lm, valid = _inputs(ptbxl500, 4)
    x = x.copy()
    x[0, 3] = 800  # a flat lead (a constant offset)
    x[1] = 0  # an all-zero record
    x[2, :, 1000:1400] = 32767  # saturation, then a step
    x[3] = 5  # a flat record
    for zscore in ("record", "lead"):
        out = preprocess(x, lm, valid, 500, DataConfig(zscore=zscore), train=False)
        assert np.isfinite(out).all()
        assert np.all(out[1] == 0) and np.all(out[3] == 0)
        np.testing.assert_allclose(out[2].std(), 1.0, rtol=1e-4)
    # At the model rate a constant lead stays constant through the filter (zi is the steady state), so
    # per-lead z-scoring sees std < FLAT_STD and outputs zeros. (From a 500 Hz store, resample_poly's zero
    # padding turns a constant into ramps at both ends, which the high-pass spreads: finite, not zero.)
    x250 = np.full((1, 12, 2500), 800, np.int16)
    x250[0, 1:] = ptbxl500[0, 1:, ::2]
    out = preprocess(x250, np.ones((1, 12), bool), np.array([2500]), 250, DataConfig(zscore="lead"), train=False)
    assert np.all(out[0, 0] == 0) and np.isfinite(out).all() and np.abs(out[0, 1:]).max() > 1
    assert FLAT_STD < 1.0


def test_short_records_are_zero_after_their_valid_length(ptbxl500):
    x, lm, valid = _inputs(ptbxl500, 5)
    x = x.copy()
    valid[:] = [5000, 2778, 4501, 200, 100]  # 2500, 1389, 2251, 100 and 50 samples at 250 Hz
    for b, v in enumerate(valid):
        x[b, :, v:] = 0
    cfg = DataConfig(precision="float64")
    n_model = model_lengths(valid, 500, 250, 5000)
    np.testing.assert_array_equal(n_model, [2500, 1389, 2251, 100, 50])
    starts = crop_starts(n_model, cfg.crop, np.random.default_rng(1), train=True)
    ours = preprocess(x, lm, valid, 500, cfg, starts=starts)
    ref = scipy_pipeline(x, lm, valid, 500, cfg, starts)
    assert ulp_error(ours, ref) <= TOL_ULP["pipeline"]
    assert np.all(ours[1, :, 1389:] == 0) and np.all(ours[4, :, 50:] == 0)


def test_parallel_and_serial_kernels_agree(ptbxl500):
    x, lm, valid = _inputs(ptbxl500, 40)  # 3 groups of 16, the last partial
    lm[5, 2] = False
    kw = dict(starts=np.arange(40) * 5, train=True)
    np.testing.assert_array_equal(preprocess(x, lm, valid, 500, DataConfig(), parallel=True, **kw),
                                  preprocess(x, lm, valid, 500, DataConfig(), parallel=False, **kw))


def test_zscore_kernel_is_compiler_independent(ptbxl500):
    # No fastmath reassociation: the compiled kernel gives bit for bit what its plain-Python body gives
    # (the same summation order), and agrees with numpy's float64 z-score to float32 rounding.
    from crema_fast.data.preprocess import _zscore_rows

    x = ptbxl500[:6, :, :2250].astype(np.float32) * np.float32(0.731) + np.float32(12.5)
    for m in (2250, 2249, 1003, 3):
        for rows in (x[0], x[1, 4:5]):  # a record, and a single lead
            jit, py = rows.copy(), rows.copy()
            _zscore_rows(jit, m, FLAT_STD)
            _zscore_rows.py_func(py, m, FLAT_STD)
            np.testing.assert_array_equal(jit, py)
            v = rows[:, :m].astype(np.float64)
            ref = (v - v.mean()) / v.std() if v.std() > FLAT_STD else np.zeros_like(v)  # flat -> zeros
            tol = 4 * np.finfo(np.float32).eps * max(np.abs(ref).max(), 1.0)
            np.testing.assert_allclose(jit[:, :m], ref, rtol=0, atol=tol)
            np.testing.assert_array_equal(jit[:, m:], rows[:, m:])  # past m: untouched


def test_bad_arguments_and_configs(ptbxl500):
    x, lm, valid = _inputs(ptbxl500, 2)
    with pytest.raises(TypeError, match="signals"):
        preprocess(x.astype(np.float32), lm, valid, 500, DataConfig(), train=False)
    with pytest.raises(ValueError, match="lead_mask"):
        preprocess(x, lm[:, :6], valid, 500, DataConfig(), train=False)
    with pytest.raises(ValueError, match="starts"):
        preprocess(x, lm, valid, 500, DataConfig(), starts=np.array([0, 251]))
    with pytest.raises(ValueError, match="rng"):
        preprocess(x, lm, valid, 500, DataConfig())
    for kw in (dict(highpass=50.0, lowpass=40.0), dict(notch=55), dict(zscore="batch"), dict(crop=0),
               dict(lowpass=125.0), dict(precision="float16"), dict(model_rate=0)):
        with pytest.raises(ConfigError):
            DataConfig(**kw)
