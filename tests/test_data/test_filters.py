"""crema_fast.data.filters against scipy.signal.sosfiltfilt on real PTB-XL records."""

import re

import numba as nb
import numpy as np
import pytest
from scipy import signal as sps

from crema_fast.data import filters
from crema_fast.data.resample import resample_poly
from tests.test_data.tolerances import F32_STATE_VS_SCIPY32, TOL_ULP, ulp_error


@pytest.fixture(scope="module")
def ecg250(ptbxl500):
    """32 real ECGs at 250 Hz (scipy's resample_poly of the 500 Hz records), float64 µV."""
    return sps.resample_poly(ptbxl500[:32].astype(np.float64), 1, 2, axis=-1)


def test_design_is_scipy_butter_then_notch():
    sos = filters.design_sos(250, 0.67, 40.0, 5, 50)
    hp = sps.butter(5, 0.67, btype="highpass", fs=250, output="sos")
    lp = sps.butter(5, 40.0, btype="lowpass", fs=250, output="sos")
    notch = sps.tf2sos(*sps.iirnotch(50, 30.0, fs=250))
    np.testing.assert_array_equal(sos, np.concatenate([hp, lp, notch]))
    # scipy's default padlen, written out: 7 sections, 2 of them first order
    assert filters.padlen(sos) == 3 * (2 * 7 + 1 - 2)
    assert filters.padlen(filters.design_sos(250, 0.67, 40.0, 4)) == 3 * (2 * 4 + 1)


@pytest.mark.parametrize("fs,hp,lp,notch,key", [
    (250, 0.67, 40.0, None, "filter"),   # the default band-pass at the model rate
    (500, 0.67, 40.0, None, "filter"),   # the same at the store rate
    (250, 0.67, None, None, "filter"),   # high-pass only
    (250, None, 40.0, 60, "filter_notch"),
    (250, 0.67, 40.0, 50, "filter_notch"),
])
def test_matches_scipy_float64(ptbxl500, ecg250, fs, hp, lp, notch, key):
    x = ecg250 if fs == 250 else ptbxl500[:16].astype(np.float64)
    sos = filters.design_sos(fs, hp, lp, 5, notch)
    ref = sps.sosfiltfilt(sos, x, axis=-1)
    ours = filters.sosfiltfilt(x, sos, precision="float64")
    assert ours.dtype == np.float32 and ours.shape == x.shape
    assert ulp_error(ours, ref) <= TOL_ULP[key]


def test_int16_input_and_odd_row_counts(ptbxl500):
    # 5 records x 12 leads = 60 rows: one partial SIMD group; int16 straight from the store
    x = ptbxl500[:5]
    sos = filters.design_sos(500, 0.67, 40.0)
    ref = sps.sosfiltfilt(sos, x.astype(np.float64), axis=-1)
    assert ulp_error(filters.sosfiltfilt(x, sos, precision="float64"), ref) <= TOL_ULP["filter"]


@pytest.mark.parametrize("n", [34, 35, 100])
def test_short_signals_padlen_edge(ecg250, n):
    # scipy needs n > padlen (33 here); the odd extension then reaches the far end of the signal
    sos = filters.design_sos(250, 0.67, 40.0)
    x = ecg250[:2, :, 500:500 + n]
    ref = sps.sosfiltfilt(sos, x, axis=-1)
    assert ulp_error(filters.sosfiltfilt(x, sos, precision="float64"), ref) <= TOL_ULP["filter"]
    with pytest.raises(ValueError, match="padlen"):
        filters.sosfiltfilt(x[..., :33], sos)


def test_float32_state_within_scipy_float32_error(ecg250):
    sos = filters.design_sos(250, 0.67, 40.0)
    ref = sps.sosfiltfilt(sos, ecg250, axis=-1)
    scipy32 = sps.sosfiltfilt(sos.astype(np.float32), ecg250.astype(np.float32), axis=-1)
    ours32 = filters.sosfiltfilt(ecg250, sos, precision="float32")
    assert ulp_error(ours32, ref) <= F32_STATE_VS_SCIPY32 * ulp_error(scipy32, ref)


def test_constant_and_zero_channels():
    sos = filters.design_sos(250, 0.67, 40.0)
    x = np.zeros((3, 600))
    x[1] = 1234.0
    x[2, 300:] = 50.0
    ours = filters.sosfiltfilt(x, sos, precision="float64")
    assert np.all(ours[0] == 0)  # zeros stay exactly zero
    assert np.abs(ours[1]).max() < 1e-6 * 1234  # the high-pass removes a constant (zi: steady state)
    assert ulp_error(ours[2], sps.sosfiltfilt(sos, x[2])) <= TOL_ULP["filter"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="sos"):
        filters.sosfiltfilt(np.zeros((2, 100)), np.zeros((3, 5)))
    with pytest.raises(TypeError, match="x"):
        filters.sosfiltfilt(np.zeros((2, 100), complex), filters.design_sos(250, 0.67, 40.0))


def _packed_fma(asm: str) -> set[str]:
    return set(re.findall(r"\b(vfn?m(?:add|sub)\d*p[sd])\s+[^\n]*%[yz]mm", asm))


@pytest.mark.skipif("avx2" not in open("/proc/cpuinfo").read(), reason="checks AVX2/AVX-512 code generation")
def test_hot_loops_vectorize():
    """The loop shapes the note warns about: the biquad pass and the polyphase FIR must compile to packed
    FMAs on ymm/zmm registers (a fresh uncached compile, so the assembly is available)."""
    from crema_fast.data import resample

    fm = {"contract"}
    cascade = nb.njit(fastmath=fm)(filters._cascade_pass.py_func)
    buf = np.zeros((40, 64), np.float32)
    for dt in (np.float32, np.float64):
        v = np.zeros(64, dt)
        cascade(buf, 40, np.zeros((2, 5), dt), np.zeros((2, 2), dt), v, v.copy(), v.copy(), True)
    for asm in cascade.inspect_asm().values():
        assert _packed_fma(asm), "the biquad lane loop did not vectorize"
    fir = nb.njit(fastmath=fm)(resample.apply_plan.py_func)
    pl = resample.plan(1, 2, 100)
    fir(np.zeros((140, 64), np.float32), pl.lpad, pl.start, pl.phase, pl.offs, pl.vals.astype(np.float32),
        pl.count, 10, np.zeros((60, 64), np.float32), 0)
    assert all(_packed_fma(a) for a in fir.inspect_asm().values()), "the FIR lane loop did not vectorize"


def test_resample_then_filter_is_st_mem_order(ptbxl500):
    # the kernels compose: resample 500 -> 250 then filter at 250 equals scipy doing the same steps
    x = ptbxl500[:4]
    sos = filters.design_sos(250, 0.67, 40.0)
    ref = sps.sosfiltfilt(sos, sps.resample_poly(x.astype(np.float64), 1, 2, axis=-1), axis=-1)
    ours = filters.sosfiltfilt(resample_poly(x, 1, 2, precision="float64"), sos, precision="float64")
    assert ulp_error(ours, ref) <= TOL_ULP["pipeline"]
