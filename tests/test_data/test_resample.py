"""crema_fast.data.resample against scipy.signal.resample_poly on real PTB-XL records."""

import numpy as np
import pytest
from scipy import signal as sps

from crema_fast.data import resample
from tests.test_data.tolerances import TOL_ULP, ulp_error


@pytest.mark.parametrize("rate_in,rate_out", [
    (500, 250),   # the default: PTB-XL / CinC at the store rate -> the model rate (half-band, 21 nonzero taps)
    (1000, 250),  # ptbdb
    (360, 250),   # mitdb: up 25, down 36
    (100, 250),   # upsampling (PTB-XL's 100 Hz version)
    (257, 250),   # a prime rate: 250 phases
    (500, 100),
])
def test_matches_scipy(ptbxl500, rate_in, rate_out):
    x = ptbxl500[:8]
    up, down = resample.ratio(rate_in, rate_out)
    ref = sps.resample_poly(x.astype(np.float64), up, down, axis=-1)
    ours = resample.resample_poly(x, up, down)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ulp_error(ours, ref) <= TOL_ULP["resample"]
    assert ulp_error(resample.resample_poly(x, up, down, precision="float64"), ref) <= TOL_ULP["resample_f64"]


def test_equal_rates_is_identity(ptbxl500):
    assert resample.ratio(250, 250) == (1, 1)
    x = ptbxl500[:2]
    np.testing.assert_array_equal(resample.resample_poly(x, 3, 3), x.astype(np.float32))


@pytest.mark.parametrize("n", [1, 7, 40, 41, 4999])
def test_lengths_and_edges(ptbxl500, n):
    # short inputs: the filter overhangs both ends (scipy pads with zeros); odd lengths round up
    x = ptbxl500[:1, :3, :n]
    ref = sps.resample_poly(x.astype(np.float64), 1, 2, axis=-1)
    ours = resample.resample_poly(x, 1, 2)
    assert ours.shape[-1] == resample.out_length(n, 1, 2) == ref.shape[-1]
    if np.abs(ref).max() > 0:
        assert ulp_error(ours, ref) <= TOL_ULP["resample"]


def test_prefix_of_zero_padded_window_equals_resampled_prefix(ptbxl500):
    # what the pipeline relies on for short records: resampling the zero-padded window and keeping
    # ceil(valid / 2) samples equals resampling the valid samples alone (scipy pads with zeros too)
    x = ptbxl500[:1].copy()
    valid = 2777
    x[..., valid:] = 0
    full = resample.resample_poly(x, 1, 2)[..., :resample.out_length(valid, 1, 2)]
    np.testing.assert_array_equal(full, resample.resample_poly(x[..., :valid], 1, 2))


def test_bad_arguments():
    with pytest.raises(ValueError, match="rate_in"):
        resample.ratio(0, 250)
    with pytest.raises(ValueError, match="up, down"):
        resample.resample_poly(np.zeros((2, 10)), 0, 2)
