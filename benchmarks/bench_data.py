"""The data path on one core: Numba preprocessing alone, and the whole loader from store to masked batch.

Run: ``pytest benchmarks/bench_data.py --benchmark-only -s`` (about two minutes). All figures come from one
run on the 500 real PTB-XL 500 Hz records of ../shared/data, repeated to 5,000 rows in two stores written
in the converter's layout (Blosc zstd 1 bit-shuffle, one record per chunk, 512 per shard): one at 500 Hz
and one at 250 Hz (scipy's resample_poly of the same records). Per-core rates are ECG per CPU-second of
this process and its finished children (DataLoader workers), so other processes on a shared machine do
not skew them; wall-clock rates are in ``ecg_s_wall``. Measured:
- preprocessing alone (resample 500 -> 250 where needed, band-pass 0.67-40 Hz order 5 zero-phase, random
  crop 2250, z-score, two per-lead masks at 0.75): ``crema_fast.data.preprocess`` + ``make_views`` on
  batches of 256 in memory, pinned to one core, Numba on one thread; both filter precisions;
- the same work per record in scipy (resample_poly + sosfiltfilt + crop + z-score + numpy argsort masks);
- torch_ecg's preprocessing per record where it is installed (its numpy ``PreprocManager``: ``Resample`` to
  250 Hz where needed, ``BandPass`` 0.67-40 Hz Butterworth order 5, ``Normalize`` z-score; then the same crop
  and numpy masks as the scipy peer); reported as absent, with the reason, where it does not import
  (a plain ``pip install torch-ecg`` would downgrade pandas; ``--no-deps`` plus its import-time
  dependencies works);
- the whole loader (``ECGLoader``, batches of 256, fully random order) with 0 workers (one core) and 1 and
  2 persistent worker processes, against a scipy loader (the same reader, then the scipy pipeline per
  record);
- Numba's compile time (first call in a fresh process with an empty cache) and the cache-load time,
  separately: neither is part of any rate.
Quick mode (CREMA_BENCH_QUICK=1): stores of 1,024 rows at 500 Hz only, fewer repeats, the loader with 0
and 2 workers, and no compile-time measurement (two fresh processes compiling everything).
Rows are appended to benchmarks/results/data.jsonl.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numba
import numpy as np
import zarr
from scipy import signal as sps

from crema_fast.data import DataConfig, ECGLoader, MaskConfig, filters, make_views
from crema_fast.data.preprocess import preprocess
from harness import cpu_seconds, print_table, quick, record, summarize
from zarr_store.reader import StoreReader

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptbxl" / "records500"
QUICK = quick()
BATCH = 256
ROWS = 1024 if QUICK else 5000
RATES = (500,) if QUICK else (500, 250)  # store rates
MASK = MaskConfig()


@contextmanager
def cores(n: int):
    """Pin this process (and the workers it forks) to ``n`` cores, Numba to ``n`` threads."""
    allowed = sorted(os.sched_getaffinity(0))
    threads = numba.get_num_threads()
    os.sched_setaffinity(0, set(allowed[-n:]))
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        os.sched_setaffinity(0, set(allowed))
        numba.set_num_threads(threads)


def _measure(fn, n_ecg: int, repeat: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = cpu_seconds(), time.perf_counter()
        fn()
        cpu.append(n_ecg / (cpu_seconds() - c0))
        wall.append(n_ecg / (time.perf_counter() - w0))
    s = summarize(cpu)
    return {"ecg_s": s["median"], "ecg_s_min": s["min"], "ecg_s_max": s["max"], "ecg_s_iqr": s["iqr"],
            "ecg_s_wall": summarize(wall)["median"], "runs": s["n"]}


def _records() -> np.ndarray:
    heads = sorted(DATA.glob("*/*_hr.hea"))
    return np.stack([np.fromfile(h.with_suffix(".dat"), dtype="<i2").reshape(-1, 12).T for h in heads])


def _store(path: Path, signals: np.ndarray, rate: int) -> Path:
    """ROWS rows (the records repeated) in the converter's layout; absent columns read as all leads
    present and the full window."""
    from zarr.codecs import BloscCodec

    group = zarr.open_group(path, mode="w", zarr_format=3)
    T = signals.shape[-1]
    group.attrs.update(format_version=1, rate=rate, window=T, window_s=T / rate, units="uV")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arr = group.create_array("signals", shape=(ROWS, 12, T), dtype="int16", chunks=(1, 12, T),
                                 shards=(512, 12, T), fill_value=0,
                                 compressors=[BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", typesize=2)])
    for s in range(0, ROWS, 512):
        e = min(ROWS, s + 512)
        arr[s:e] = signals[np.arange(s, e) % len(signals)]
    return path


def scipy_pipeline(signals: np.ndarray, rate: int, cfg: DataConfig, rng: np.random.Generator) -> tuple:
    """The same work per record with scipy and numpy (the peer of the Numba path)."""
    sos = filters.design_sos(cfg.model_rate, cfg.highpass, cfg.lowpass, cfg.filter_order)
    P = MASK.n_patches(cfg.crop)
    K = MASK.n_keep(P)
    out = []
    masks = []
    for x in signals:
        v = x.astype(np.float64)
        if rate != cfg.model_rate:
            g = np.gcd(rate, cfg.model_rate)
            v = sps.resample_poly(v, cfg.model_rate // g, rate // g, axis=-1)
        v = sps.sosfiltfilt(sos, v, axis=-1)
        s = int(rng.integers(0, v.shape[-1] - cfg.crop + 1))
        v = v[:, s:s + cfg.crop]
        out.append(((v - v.mean()) / (v.std() + 1e-8)).astype(np.float32))
        for _ in range(2):
            ids_shuffle = np.argsort(rng.random((12, P)), axis=-1)
            ids_restore = np.argsort(ids_shuffle, axis=-1)
            mask = np.ones((12, P), np.float32)
            mask[:, :K] = 0
            masks.append((ids_shuffle[:, :K], np.take_along_axis(mask, ids_restore, -1), ids_restore))
    return np.stack(out), masks


def _torch_ecg():
    """torch_ecg's per-record pipeline factory and its version, or (None, why it is absent)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torch_ecg
            from torch_ecg._preprocessors import BandPass, Normalize, PreprocManager, Resample
    except Exception as err:  # noqa: BLE001 - any import failure means "absent", with its reason
        return None, f"absent: {type(err).__name__}: {err}"

    def make(rate: int, cfg: DataConfig):
        steps = [Resample(fs=cfg.model_rate)] if rate != cfg.model_rate else []
        steps += [BandPass(lowcut=cfg.highpass, highcut=cfg.lowpass, filter_type="butter",
                           filter_order=cfg.filter_order), Normalize(method="z-score")]
        return PreprocManager(*steps)

    return make, f"torch_ecg {torch_ecg.__version__}"


def torch_ecg_pipeline(ppm, signals: np.ndarray, rate: int, cfg: DataConfig, rng: np.random.Generator) -> list:
    """torch_ecg's preprocessing per record, then the scipy peer's crop and numpy masks (the same work)."""
    P = MASK.n_patches(cfg.crop)
    out = []
    for x in signals:
        v, _ = ppm(x.astype(np.float32), rate)
        s = int(rng.integers(0, v.shape[-1] - cfg.crop + 1))
        out.append(np.ascontiguousarray(v[:, s:s + cfg.crop], dtype=np.float32))
        for _ in range(2):
            ids_shuffle = np.argsort(rng.random((12, P)), axis=-1)
            np.argsort(ids_shuffle, axis=-1)
    return out


def _compile_times(tmp: Path) -> dict:
    """First call (compile) and cache-load times of the kernels in fresh processes with an empty cache."""
    code = (
        "import time, numpy as np\n"
        "from crema_fast.data import DataConfig, MaskConfig, make_views\n"
        "from crema_fast.data.preprocess import preprocess\n"
        "x = np.zeros((2, 12, 5000), np.int16); m = np.ones((2, 12), bool); v = np.full(2, 5000)\n"
        "t0 = time.perf_counter(); preprocess(x, m, v, 500, DataConfig(), train=False)\n"
        "make_views(0, 2, 12, 30, MaskConfig()); t1 = time.perf_counter()\n"
        "for par in (True, False):\n"
        "    for prec in ('float32', 'float64'):\n"
        "        cfg = DataConfig(precision=prec)\n"
        "        preprocess(x, m, v, 500, cfg, train=False, parallel=par)\n"
        "        preprocess(x[..., ::2].copy(), m, v // 2, 250, cfg, train=False, parallel=par)\n"
        "print(t1 - t0, time.perf_counter() - t0)\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp / "numba_cache")}
    out = {}
    for key in ("compile", "cache_load"):
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        first, total = (float(v) for v in res.stdout.split()[-2:]) if res.returncode == 0 else (np.nan, np.nan)
        out[f"{key}_default_s"], out[f"{key}_all_s"] = first, total
    return out


def _loader_epochs(path: Path, cfg: DataConfig, workers: int, epochs: int = 2) -> dict:
    """Whole epochs after a first one (which starts the persistent workers); CPU-seconds include the
    live workers'."""
    loader = ECGLoader(str(path), cfg, MASK, BATCH, seed=0, workers=workers, pin=False)
    n = len(loader) * BATCH
    try:
        return _measure(lambda: [None for _ in loader], n, repeat=epochs, warmup=1)
    finally:
        loader.close()


def test_bench_data(benchmark, tmp_path):
    recs = _records()
    r250 = np.round(sps.resample_poly(recs.astype(np.float64), 1, 2, axis=-1)).astype(np.int16) if 250 in RATES else None
    stores = {rate: _store(tmp_path / f"s{rate}.zarr", {500: recs, 250: r250}[rate], rate) for rate in RATES}
    inputs = {rate: {500: recs, 250: r250}[rate][:BATCH] for rate in RATES}
    rows: list[dict] = []
    if not QUICK:
        comp = _compile_times(tmp_path)
        rows.append({"stage": "compile", "path": "numba: default path (float32, parallel) + masks",
                     "compile_s": comp["compile_default_s"], "cache_load_s": comp["cache_load_default_s"]})
        rows.append({"stage": "compile", "path": "numba: all (both precisions, parallel + serial, 500/250 Hz)",
                     "compile_s": comp["compile_all_s"], "cache_load_s": comp["cache_load_all_s"]})
    make_ppm, torch_ecg_status = _torch_ecg()
    if make_ppm is None:
        print(f"torch_ecg: its preprocessing is not measured ({torch_ecg_status})")
        rows.append({"stage": "preprocess", "path": "torch_ecg per record", "status": torch_ecg_status})

    with cores(1):
        for rate, x in inputs.items():
            lm = np.ones((BATCH, 12), bool)
            valid = np.full(BATCH, x.shape[-1])
            rng = np.random.default_rng(0)
            peer = _measure(lambda: scipy_pipeline(x[:32], rate, DataConfig(), rng), 32, repeat=2 if QUICK else 3)
            rows.append({"stage": "preprocess", "path": "scipy per record", "store_hz": rate, **peer})
            if make_ppm is not None:
                ppm = make_ppm(rate, DataConfig())
                tecg = _measure(lambda: torch_ecg_pipeline(ppm, x[:32], rate, DataConfig(), rng), 32,
                                repeat=2 if QUICK else 3)
                rows.append({"stage": "preprocess", "path": "torch_ecg per record", "store_hz": rate, **tecg,
                             "x_scipy": tecg["ecg_s"] / peer["ecg_s"], "status": torch_ecg_status})
            for prec in ("float64", "float32"):
                cfg = DataConfig(precision=prec)

                def numba_batch():
                    preprocess(x, lm, valid, rate, cfg, rng=rng)
                    make_views(rng, BATCH, 12, 30, MASK)

                r = _measure(numba_batch, BATCH, repeat=3 if QUICK else 7)
                rows.append({"stage": "preprocess", "path": f"numba ({prec} state)", "store_hz": rate, **r,
                             "x_scipy": r["ecg_s"] / peer["ecg_s"]})
                if make_ppm is not None:
                    rows[-1]["x_torch_ecg"] = r["ecg_s"] / tecg["ecg_s"]
        benchmark.pedantic(lambda: preprocess(inputs[500], np.ones((BATCH, 12), bool), np.full(BATCH, 5000), 500,
                                              DataConfig(), rng=np.random.default_rng(0)), rounds=3, iterations=1)

        peers = {}
        for rate, path in stores.items():

            reader = StoreReader(str(path))
            rng = np.random.default_rng(1)
            batches = [rng.choice(ROWS, 64, replace=False) for _ in range(3)]
            it = iter(range(10**6))

            def scipy_loader():
                scipy_pipeline(reader.read(batches[next(it) % 3]).signals, rate, DataConfig(), rng)

            peer = _measure(scipy_loader, 64, repeat=2 if QUICK else 3)
            peers[rate] = peer["ecg_s"]
            rows.append({"stage": "loader", "path": "reader + scipy per record", "store_hz": rate, "workers": 0,
                         **peer})
            for prec in ("float32",) if QUICK else ("float64", "float32"):
                r = _loader_epochs(path, DataConfig(precision=prec), 0)
                rows.append({"stage": "loader", "path": f"ECGLoader ({prec} state)", "store_hz": rate,
                             "workers": 0, **r, "x_scipy": r["ecg_s"] / peer["ecg_s"]})
    for workers in (2,) if QUICK else (1, 2):
        with cores(2):
            for rate, path in stores.items():
                r = _loader_epochs(path, DataConfig(), workers)
                # per core: CPU-seconds of the main process and the workers together (the workers write
                # into a reused shared-memory ring; the main process copies each batch out of it)
                rows.append({"stage": "loader", "path": "ECGLoader (float32 state)", "store_hz": rate,
                             "workers": workers, **r, "x_scipy": r["ecg_s"] / peers[rate]})
    print_table("data path, ECG/s per core (CPU-second)", rows,
                ["stage", "path", "store_hz", "workers", "ecg_s", "ecg_s_min", "ecg_s_max", "ecg_s_wall", "x_scipy",
                 "x_torch_ecg", "compile_s", "cache_load_s", "status"])
    record("data", rows)
