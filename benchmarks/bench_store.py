"""The store, end to end on one core: conversion, batched reads by access pattern, size.

Run: ``pytest benchmarks/bench_store.py --benchmark-only -s`` (about a minute). All figures come from
one run on the 500 real PTB-XL 500 Hz records of ../shared/data, pinned to one core, warm page cache.
Per-core rates are ECG per CPU-second of the process (and its children), so that other processes on a
shared machine do not skew them; wall-clock rates are in the ``ecg_s_wall`` column. Measured:
- conversion ECG/s per core (``convert(workers=1)``) against ``wfdb.rdsamp`` alone on the same records,
  for the 500 records and at scale (5,000: the records under 10 source folders), and the fixed cost
  of one conversion that their difference gives;
- reads of batches of 256 (contiguous, chunk-aligned shuffled, fully random) from a store of 5,000 rows
  (the 500 records repeated, the converter's codec pipeline) in ECG/s per core and decoded MB/s (int16,
  120 kB per ECG): our reader decoding into a reused ``out`` buffer (as a loader does) and into a new
  array each batch (which pays the page faults of 30 MB of fresh memory), zarr's own API (slices /
  ``oindex`` with sorted indices, its best case) and the WFDB files (``rdsamp``), beside the codec's
  bare decode rate (Blosc decode of the same chunks, already in memory, in a loop);
- the same for the converter's lz4 and delta options (fully random batches only);
- bytes per ECG against the WFDB originals, and the compression ratio over raw int16.
Quick mode (CREMA_BENCH_QUICK=1): the first 100 records, one conversion codec (the default) and no
at-scale conversion, reads from a store of 1,024 rows (5 batches a pattern; one timed batch for zarr's
API and wfdb), no codec variants.
Rows are appended to benchmarks/results/store.jsonl.
Two more, run without --benchmark-only: ``test_bench_convert_scaling`` (workers, Dask) and
``test_bench_convert_hdf5`` (a CODE-15%-shaped HDF5 part against the WFDB path on one core).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numcodecs.blosc
import numpy as np
import pytest
import zarr

from harness import cpu_seconds, print_table, quick, record, summarize
from zarr_store.reader import StoreReader, _undelta_rows

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ptbxl"
QUICK = quick()
BATCH = 256
ROWS = 1024 if QUICK else 5000
N_BATCHES = 5 if QUICK else 11  # per access pattern, the first one a warm-up
SCALE = 10  # source folders in the at-scale conversion
ECG_BYTES = 12 * 5000 * 2  # decoded int16 bytes of one 10 s ECG at 500 Hz


@contextmanager
def one_core():
    """Pin this process to one core (the last one allowed) for per-core figures."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _records() -> list[Path]:
    return sorted((DATA / "records500").glob("*/*_hr.hea"))


def _archive(root: Path, heads: list[Path]) -> Path:
    """A PTB-XL-shaped folder of the 500 Hz records (the shared folder also lists 100 Hz ones): hard
    links, or copies across file systems. Not symlinks: resolving one costs ~4 µs per file opened,
    which a real archive does not pay."""
    for h in heads:
        for f in (h, h.with_suffix(".dat")):
            dst = root / f.relative_to(DATA)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f.resolve(), dst)
            except OSError:
                shutil.copyfile(f, dst)
    (root / "ptbxl_database.csv").symlink_to(DATA / "ptbxl_database.csv")
    (root / "RECORDS").write_text("".join(f"{h.relative_to(DATA).with_suffix('')}\n" for h in heads))
    return root


class _Timings(list):
    """(cpu, wall) seconds per run."""

    def add(self, fn, *args):
        c0, w0 = cpu_seconds(), time.perf_counter()
        result = fn(*args)
        self.append((cpu_seconds() - c0, time.perf_counter() - w0))
        return result

    @property
    def cpu(self) -> np.ndarray:
        return np.array([c for c, _ in self])


def _rate(t: _Timings, n: int) -> dict:
    s = summarize([n / c for c, _ in t])
    wall = summarize([n / w for _, w in t])
    return {"ecg_s": s["median"], "ecg_s_min": s["min"], "ecg_s_iqr": s["iqr"], "ecg_s_wall": wall["median"],
            "mb_s": s["median"] * ECG_BYTES / 1e6, "runs": s["n"]}


def _repeat(fn, repeat: int, warmup: int = 1) -> _Timings:
    for _ in range(warmup):
        fn()
    t = _Timings()
    for _ in range(repeat):
        t.add(fn)
    return t


def _conversion(tmp: Path, heads: list[Path]) -> list[dict]:
    import wfdb

    rows = []
    sample = [str(h.with_suffix("")) for h in heads[:50 if QUICK else 100]]
    rd = _rate(_repeat(lambda: [wfdb.rdsamp(p) for p in sample], repeat=2 if QUICK else 3, warmup=0), len(sample))
    rows.append({"stage": "convert", "path": "wfdb.rdsamp", "pattern": "records", **rd})
    try:
        from zarr_store.convert import convert
    except ImportError as exc:
        print(f"conversion not measured: {exc}")
        return rows
    archive = _archive(tmp / "archive", heads)
    outs = iter(range(100))
    default = None

    # The default codec (Blosc zstd 1 bit-shuffle) first: later steps read the first store written.
    for codec in ("zstd",) if QUICK else ("zstd", "delta", "lz4"):
        def run(codec=codec):
            out = tmp / f"conv{next(outs)}.zarr"
            convert([str(archive)], out, workers=1, progress=False, codec=codec)
            return out

        conv = _rate(_repeat(run, repeat=2 if QUICK else 3), len(heads))
        if codec == "zstd":
            default = conv
        path = "convert(workers=1)" if codec == "zstd" else f"convert(workers=1, codec={codec})"
        rows.append({"stage": "convert", "path": path, "pattern": f"{len(heads)} records", **conv,
                     "x_rdsamp": conv["ecg_s"] / rd["ecg_s"]})
    if QUICK:
        return rows

    # At scale: the same records under SCALE source folders (10 shards), so that the fixed cost of a
    # conversion (~50 new files and folders: the store's arrays, markers, report; ~0.3 ms each on our
    # VMs' ext4) weighs as it does on a real archive. That cost is the difference of the two rates.
    roots = [str(_archive(tmp / f"scale{k}", heads)) for k in range(SCALE)]
    n = SCALE * len(heads)

    def run_scale():
        out = tmp / "scale.zarr"
        shutil.rmtree(out, ignore_errors=True)
        c0 = cpu_seconds()
        convert(roots, out, workers=1, progress=False)
        return cpu_seconds() - c0

    run_scale()
    per = summarize([n / run_scale() for _ in range(3)])
    scale = {"ecg_s": per["median"], "ecg_s_min": per["min"], "ecg_s_iqr": per["iqr"], "runs": per["n"],
             "mb_s": per["median"] * ECG_BYTES / 1e6, "x_rdsamp": per["median"] / rd["ecg_s"]}
    fixed_ms = 1e3 * len(heads) * (1 / default["ecg_s"] - 1 / scale["ecg_s"])
    rows.append({"stage": "convert", "path": "convert(workers=1)", "pattern": f"{n} records, {SCALE} sources",
                 **scale, "fixed_ms": fixed_ms})
    shutil.rmtree(tmp / "scale.zarr", ignore_errors=True)
    return rows


def _build_read_store(tmp: Path, signals: np.ndarray, like: Path | None, codec: str = "zstd",
                      rows: int = ROWS) -> Path:
    """``rows`` rows (the records repeated) in the store layout. codec "zstd" takes the converter's
    own pipeline when it ran (zstd-1 bit-shuffle by default); "lz4" and "delta" are its options."""
    from zarr.codecs import BloscCodec
    from zarr.codecs.numcodecs import Delta

    path = tmp / f"read{rows}_{codec}.zarr"
    group = zarr.open_group(path, mode="w", zarr_format=3)
    group.attrs.update(rate=500, window=5000)
    filters = [Delta(dtype="int16")] if codec == "delta" else None
    compressors = [BloscCodec(cname="lz4" if codec == "lz4" else "zstd", clevel=1, shuffle="bitshuffle",
                              typesize=2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.delta is outside the v3 spec: zarr warns
        if like is not None and codec == "zstd":
            src = zarr.open_array(like, path="signals", mode="r")
            filters, compressors = src.filters or None, src.compressors
        arr = group.create_array("signals", shape=(rows, 12, 5000), dtype="int16", chunks=(1, 12, 5000),
                                 shards=(512, 12, 5000), filters=filters, compressors=compressors, fill_value=0)
    for s in range(0, rows, 512):
        e = min(rows, s + 512)
        arr[s:e] = signals[np.arange(s, e) % len(signals)]
    return path


def _batches(pattern: str, rng: np.random.Generator, k: int) -> list[np.ndarray]:
    out = []
    for _ in range(k):
        if pattern == "contiguous":
            s = int(rng.integers(0, ROWS - BATCH))
            out.append(np.arange(s, s + BATCH))
        elif pattern == "chunk-aligned shuffled":  # a 256-row block inside one shard, in shuffled order
            s = int(rng.integers(0, ROWS // BATCH)) * BATCH
            out.append(s + rng.permutation(BATCH))
        else:
            out.append(rng.choice(ROWS, BATCH, replace=False))
    return out


def _timed(fn, batches: list[np.ndarray]) -> _Timings:
    fn(batches[0])  # warm-up: opens files, caches the shard indexes, compiles
    t = _Timings()
    for b in batches[1:]:
        t.add(fn, b)
    return t


def _bare_decoder(path: Path, reader: StoreReader):
    """A function that Blosc-decodes 256 chunks already in memory (plus the prefix sum for delta)."""
    reader.read_signals([0])
    index = reader._index(0)
    raw = Path(path, "signals", "c", "0", "0", "0").read_bytes()
    blobs = [raw[int(o): int(o) + int(n)] for o, n in index[:BATCH]]
    dest = np.empty((BATCH, 12 * 5000), np.int16)
    rows = np.arange(BATCH)

    def decode():
        for i, b in enumerate(blobs):
            numcodecs.blosc.decompress(b, dest[i])
        if reader.layout.delta:
            _undelta_rows(dest, rows)

    return decode


def _interleaved(bare, ours, batches: list[np.ndarray]) -> tuple[_Timings, _Timings, float]:
    """Bare decode and our reader timed in alternation, so that load from other processes on the
    machine hits both alike. Returns both timings and our percent of the bare rate (median of the
    per-round ratios of CPU time)."""
    bare()
    ours(batches[0])
    t_bare, t_ours = _Timings(), _Timings()
    for b in batches[1:]:
        t_bare.add(bare)
        t_ours.add(ours, b)
    return t_bare, t_ours, 100 * float(np.median(t_bare.cpu / t_ours.cpu))


def _reads(path: Path, heads: list[Path], benchmark) -> list[dict]:
    import wfdb

    reader = StoreReader(path)
    assert reader.path_kind == "direct", reader.fallback_reason
    arr = zarr.open_array(path, path="signals", mode="r")
    rng = np.random.default_rng(0)
    bare = _bare_decoder(path, reader)
    out = np.empty((BATCH, 12, 5000), np.int16)

    def zarr_read(idx):
        if np.all(np.diff(idx) == 1):
            return arr[int(idx[0]): int(idx[-1]) + 1]
        order = np.argsort(idx)  # zarr's best case: sorted indices, reordered afterwards
        data = arr.oindex[idx[order]]
        res = np.empty_like(data)
        res[order] = data
        return res

    wfdb_paths = [str(h.with_suffix("")) for h in heads]
    rows, bare_all = [], _Timings()
    for pattern in ("contiguous", "chunk-aligned shuffled", "fully random"):
        batches = _batches(pattern, rng, N_BATCHES)
        if pattern == "fully random":  # the headline figure through pytest-benchmark
            it = iter(batches * 2)
            benchmark.pedantic(lambda: reader.read_signals(next(it), out=out), rounds=5, iterations=1,
                               warmup_rounds=1)
        t_bare, t_ours, pct = _interleaved(bare, lambda b: reader.read_signals(b, out=out), batches)
        bare_all += t_bare
        ours = _rate(t_ours, BATCH)
        fresh = _rate(_timed(reader.read_signals, batches[:5]), BATCH)
        peers = batches[:2 if QUICK else 3]  # the slow peers: fewer batches (the first is a warm-up)
        theirs = _rate(_timed(zarr_read, peers), BATCH)
        wf = _rate(_timed(lambda b: [wfdb.rdsamp(wfdb_paths[i % len(wfdb_paths)]) for i in b[:48]], peers), 48)
        rows += [
            {"stage": "read", "path": "StoreReader (out=)", "pattern": pattern, **ours, "pct_bare": pct,
             "x_zarr": ours["ecg_s"] / theirs["ecg_s"], "x_wfdb": ours["ecg_s"] / wf["ecg_s"]},
            {"stage": "read", "path": "StoreReader (new array)", "pattern": pattern, **fresh},
            {"stage": "read", "path": "zarr API", "pattern": pattern, **theirs},
            {"stage": "read", "path": "wfdb.rdsamp", "pattern": pattern, **wf},
        ]
    rows.insert(0, {"stage": "read", "path": "bare Blosc decode", "pattern": "in memory", **_rate(bare_all, BATCH)})
    return rows


def _codec_variants(tmp: Path, signals: np.ndarray) -> list[dict]:
    """The converter's other codecs: our reader on fully random batches beside their bare decode."""
    rows = []
    rng = np.random.default_rng(1)
    out = np.empty((BATCH, 12, 5000), np.int16)
    for codec in ("lz4", "delta"):
        path = _build_read_store(tmp, signals, None, codec, rows=1024)
        reader = StoreReader(path)
        assert reader.path_kind == "direct", reader.fallback_reason
        batches = [rng.choice(1024, BATCH, replace=False) for _ in range(9)]
        t_bare, t_ours, pct = _interleaved(_bare_decoder(path, reader),
                                           lambda b: reader.read_signals(b, out=out), batches)
        rows += [{"stage": f"read {codec}", "path": "bare Blosc decode", "pattern": "in memory",
                  **_rate(t_bare, BATCH)},
                 {"stage": f"read {codec}", "path": "StoreReader (out=)", "pattern": "fully random",
                  **_rate(t_ours, BATCH), "pct_bare": pct}]
    return rows


def _sizes(store: Path | None, read_store: Path, heads: list[Path]) -> list[dict]:
    wfdb_bytes = sum(h.stat().st_size + h.with_suffix(".dat").stat().st_size for h in heads) / len(heads)
    out = []
    for name, path in (("converted", store), ("read store", read_store)):
        if path is None:
            continue
        n = zarr.open_array(path, path="signals", mode="r").shape[0]
        stored = sum(f.stat().st_size for f in Path(path, "signals").rglob("*") if f.is_file())
        out.append({"stage": "size", "path": name, "pattern": f"{n} rows", "bytes_per_ecg": stored / n,
                    "ratio_raw": n * ECG_BYTES / stored, "x_wfdb_smaller": wfdb_bytes / (stored / n),
                    "wfdb_bytes_per_ecg": wfdb_bytes})
    return out


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/ptbxl")
def test_bench_store(benchmark, tmp_path):
    heads = _records()[:100] if QUICK else _records()
    signals = np.stack([np.fromfile(h.with_suffix(".dat"), dtype="<i2").reshape(5000, 12).T for h in heads])
    with one_core():
        rows = _conversion(tmp_path, heads)
        converted = next(iter(sorted(tmp_path.glob("conv*.zarr"))), None)
        read_store = _build_read_store(tmp_path, signals, converted)
        rows += _reads(read_store, heads, benchmark)
        if not QUICK:
            rows += _codec_variants(tmp_path, signals)
        rows += _sizes(converted, read_store, heads)
    cols = ["stage", "path", "pattern", "ecg_s", "ecg_s_iqr", "ecg_s_wall", "mb_s", "pct_bare", "x_zarr", "x_wfdb",
            "x_rdsamp", "fixed_ms", "bytes_per_ecg", "ratio_raw", "x_wfdb_smaller"]
    print_table("store: one core, warm page cache, batches of 256 (ECG per CPU-second, decoded MB/s)", rows, cols)
    print(json.dumps({"codec": str(zarr.open_array(read_store, path="signals").compressors)}))
    record("store", rows)
    for store in tmp_path.glob("*.zarr"):  # ~0.3 GB: not left for pytest's tmp retention
        shutil.rmtree(store, ignore_errors=True)


# -- parallel conversion: 1 vs 2 workers vs Dask ------------------------------------------------------

SCALING = ((2, 1000),) if QUICK else ((10, 5000), (40, 20000))  # (source folders, records)
SCALING_ROUNDS = 5  # the VM's speed swings by 20% within minutes: 3 rounds' medians moved by 10%


def _same_signal_files(a: Path, b: Path) -> bool:
    files = lambda s: {str(p.relative_to(s)): p for p in Path(s, "signals").rglob("*") if p.is_file()}  # noqa: E731
    fa, fb = files(a), files(b)
    return fa.keys() == fb.keys() and all(fa[k].read_bytes() == fb[k].read_bytes() for k in fa)


_CONVERT = """
import json, resource, sys, time
from zarr_store.convert import convert
roots, out, kw = json.loads(sys.argv[1])
t0, c0 = time.perf_counter(), time.process_time()
summary = convert(roots, out, progress=False, **kw)
wall, ch = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps(summary.phases))
print(wall, time.process_time() - c0 + ch.ru_utime + ch.ru_stime)
"""


def _timed_convert(roots: list[str], out: Path, kw: dict) -> tuple[float, float, dict]:
    """(wall, CPU, phases) seconds of one convert() call, in a fresh process as from the command line
    (imports done before the clock starts; no other thread, so local workers are forked:
    zarr_store.runner); CPU of the process and its local workers (a Dask cluster's is not seen)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    # The earlier runs' stores (0.9 GB at 20,000 records) written back to disk first, not by the
    # kernel's flusher threads during this run, on the cores it measures.
    os.sync()
    res = subprocess.run([sys.executable, "-c", _CONVERT, json.dumps([roots, str(out), kw])], cwd=repo,
                         capture_output=True, text=True, check=True)
    *_, phases, last = res.stdout.strip().splitlines()
    wall, cpu = last.split()
    return float(wall), float(cpu), json.loads(phases)


@contextmanager
def _running_cluster():
    """A LocalCluster of 2 worker processes, for one run: kept running through the other
    configurations' runs, its idle workers, nannies and scheduler (heartbeats, monitors) took
    5-10% from them (workers=2 at 20,000 records: 3.80-4.08 s beside it, 3.67-3.69 s without)."""
    import dask
    from distributed import LocalCluster

    with dask.config.set({"distributed.worker.multiprocessing-method": "fork"}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _scaling_runs(tmp: Path, roots: list[str], n: int, repeat: int) -> list[dict]:
    """Wall clock of whole convert() calls, the configurations interleaved round by round so that the
    other load on a shared machine hits them alike; the load average beside each round."""
    configs = {"convert(workers=1)": dict(workers=1), "convert(workers=2)": dict(workers=2),
               "convert(dask='local', workers=2)": dict(dask="local", workers=2),
               "convert(dask=<running LocalCluster of 2>)": None}
    walls = {k: [] for k in configs}
    cpus = {k: [] for k in configs}
    serial = {k: [] for k in configs}  # seconds outside the "records" step: this process alone
    loads, same = [], {}
    for _ in range(repeat):
        loads.append(os.getloadavg()[0])
        for name, kw in configs.items():
            out = tmp / f"par-{len(walls[name])}-{abs(hash(name))}.zarr"
            if kw is None:  # started before the clock, closed after it
                with _running_cluster() as scheduler:
                    wall, cpu, phases = _timed_convert(roots, out, dict(dask=scheduler))
            else:
                wall, cpu, phases = _timed_convert(roots, out, kw)
            walls[name].append(wall)
            cpus[name].append(cpu)
            serial[name].append(sum(v for k, v in phases.items() if k != "records"))
            if name == "convert(workers=1)":
                ref = out
            else:
                same[name] = same.get(name, True) and _same_signal_files(ref, out)
                shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(ref, ignore_errors=True)
    loads.append(os.getloadavg()[0])
    one = float(np.median(walls["convert(workers=1)"]))
    two = float(np.median(walls["convert(workers=2)"]))
    rows = []
    for name, w in walls.items():
        s = summarize([n / x for x in w])
        set_up = float(np.median(serial[name]))
        rows.append({"stage": "convert scaling", "path": name, "pattern": f"{n} records, {len(roots)} sources",
                     "ecg_s_wall": s["median"], "ecg_s_min": s["min"], "ecg_s_iqr": s["iqr"], "runs": s["n"],
                     "seconds": float(np.median(w)), "x_one_core": one / float(np.median(w)),
                     "vs_workers2": float(np.median(w)) / two,
                     # Amdahl: one core's time with this run's serial steps kept whole and the rest halved
                     "serial_s": set_up, "ideal_x": 2 * one / (one + set_up),
                     "cpu_seconds": float(np.median(cpus[name])),
                     "same_bytes": same.get(name, True), "loadavg_1min": loads,
                     "cores": len(os.sched_getaffinity(0))})
    return rows


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/ptbxl")
def test_bench_convert_scaling(tmp_path):
    """Parallel conversion against one core: the 500 records under 10 / 40 source folders (5,000 /
    20,000 rows), ``convert`` with 1 and 2 local worker processes, with ``dask='local'`` (a
    LocalCluster of 2 worker processes started and closed inside the call) and with a LocalCluster
    already running (its scheduler address: the cost of the conversion alone; started before the
    clock and closed after it, for that run only: _running_cluster). ECG/s by wall clock of the whole
    call (median of SCALING_ROUNDS interleaved rounds), speed-up over workers=1 and the wall clock
    against workers=2's (``vs_workers2``, 1.1 = 10% slower), whether the signal
    files equal workers=1's byte for byte, the seconds each run spends outside its "records" step
    (``serial_s``: ConvertSummary.phases; set-up and metadata, in the converting process alone) with
    the speed-up two perfect workers would reach around them (``ideal_x`` = 2 T1 / (T1 + serial_s),
    T1 the one-core time), and the 1-minute load average at each round (the machine
    is shared). Rows: stage "convert scaling" in store.jsonl."""
    heads = _records()
    rows = []
    for folders, n in SCALING:
        per = n // folders
        roots = [str(_archive(tmp_path / f"src{n}-{k}", heads[:per])) for k in range(folders)]
        rows += _scaling_runs(tmp_path, roots, n, 1 if QUICK else SCALING_ROUNDS)
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)
    cols = ["path", "pattern", "ecg_s_wall", "ecg_s_iqr", "seconds", "x_one_core", "vs_workers2", "serial_s",
            "ideal_x", "cpu_seconds", "same_bytes"]
    print_table(f"convert scaling: wall clock of the whole call, {len(os.sched_getaffinity(0))} cores "
                f"(load averages {[r['loadavg_1min'] for r in rows[::4]]})", rows, cols)
    record("store", rows)


# -- CODE-15%-shaped HDF5 conversion ------------------------------------------------------------------

CODE15_EXAMS = 1000 if QUICK else 20000
CODE15_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")


def _code15_folder(folder: Path, heads: list[Path], n: int) -> Path:
    """A CODE-15%-shaped folder: ``exams_part0.hdf5`` with ``tracings`` (n, 4096, 12) float32 mV at
    400 Hz (the PTB-XL records, cycled, resampled 500 -> 400 Hz with resample_poly; 7-10 s of each,
    seeded, centred between zeros as CODE-15% pads) and ``exam_id``; ``exams.csv`` with CODE-15%'s
    columns. Written 1,000 exams at a time."""
    import h5py
    import pandas as pd
    import wfdb
    from scipy.signal import resample_poly

    folder.mkdir(parents=True, exist_ok=True)
    recs = [resample_poly(np.nan_to_num(wfdb.rdsamp(str(h.with_suffix("")))[0]), 4, 5, axis=0).astype(np.float32)
            for h in heads]
    rng = np.random.default_rng(15)
    with h5py.File(folder / "exams_part0.hdf5", "w") as f:
        ds = f.create_dataset("tracings", (n, 4096, 12), np.float32)
        block = np.zeros((1000, 4096, 12), np.float32)
        for lo in range(0, n, 1000):
            block[:] = 0
            for k in range(min(1000, n - lo)):
                valid = int(rng.integers(2800, 4001))
                a = (4096 - valid) // 2
                block[k, a : a + valid] = recs[(lo + k) % len(recs)][:valid]
            ds[lo : lo + min(1000, n - lo)] = block[: min(1000, n - lo)]
        f["exam_id"] = np.arange(1, n + 1, dtype=np.int64)
    flags = {name: rng.random(n) < 0.05 for name in CODE15_LABELS}
    pd.DataFrame({"exam_id": np.arange(1, n + 1), "age": rng.integers(18, 90, n), "is_male": rng.random(n) < 0.5,
                  "nn_predicted_age": 50.0, **flags, "patient_id": np.arange(n) // 3, "death": False, "timey": 1.0,
                  "normal_ecg": False, "trace_file": "exams_part0.hdf5"}).to_csv(folder / "exams.csv", index=False)
    return folder


def _wfdb_400(root: Path, heads: list[Path]) -> Path:
    """The PTB-XL records resampled 500 -> 400 Hz as _code15_folder makes them, whole (10 s, 4,000
    samples, where the part's items keep 7-10 s of them), written back as WFDB (format 16, 1000 adu/mV):
    the WFDB path given the HDF5 path's work, a little more of it."""
    import wfdb
    from scipy.signal import resample_poly

    root.mkdir(parents=True, exist_ok=True)
    for h in heads:
        x, f = wfdb.rdsamp(str(h.with_suffix("")))
        x = resample_poly(np.nan_to_num(x), 4, 5, axis=0).astype(np.float32).astype(np.float64)
        wfdb.wrsamp(h.stem, fs=400, units=["mV"] * 12, sig_name=f["sig_name"], p_signal=x, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(root))
    (root / "RECORDS").write_text("".join(f"{h.stem}\n" for h in heads))
    return root


def _linked(root: Path, src: Path) -> Path:
    """A copy of the flat WFDB folder ``src`` of hard links."""
    root.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        os.link(f, root / f.name)
    return root


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/ptbxl")
def test_bench_convert_hdf5(tmp_path):
    """HDF5 conversion on one core against the WFDB path in the same run: a CODE-15%-shaped part of
    20,000 exams (1,000 quick; _code15_folder) converted at the default 500 Hz (400 -> 500 Hz
    resampling, as resample_poly), at --rate 400 (no resampling: the WFDB PTB-XL path's conditions),
    and the same count of PTB-XL WFDB records (the 500 under 40 source folders) at 500 Hz and, the
    same work as the HDF5 path, at 400 Hz (_wfdb_400: resampled 400 -> 500 Hz like the part). ECG per
    CPU-second, median of rounds interleaved so that other load hits them alike (2; 1 quick); the
    resampler alone (polyphase.resample on groups of LANES exams) beside them. Rows: stage
    "convert hdf5" in store.jsonl."""
    from zarr_store.array_records import LANES
    from zarr_store.convert import convert
    from zarr_store.polyphase import resample

    heads = _records()
    n = CODE15_EXAMS
    folder = _code15_folder(tmp_path / "code15", heads, n)
    roots = [str(_archive(tmp_path / f"wfdb{k}", heads)) for k in range(max(1, n // len(heads)))]
    n_wfdb = len(roots) * len(heads)
    w400 = _wfdb_400(tmp_path / "w400-0", heads)
    roots400 = [str(w400)] + [str(_linked(tmp_path / f"w400-{k}", w400)) for k in range(1, len(roots))]
    configs = {"convert(CODE-15% part, 400 -> 500 Hz)": ([folder], {}, n),
               "convert(CODE-15% part, rate=400: no resampling)": ([folder], {"rate": 400}, n),
               "convert(WFDB PTB-XL 500 Hz)": (roots, {}, n_wfdb),
               "convert(WFDB, the same ECGs at 400 Hz, 400 -> 500 Hz)": (roots400, {}, n_wfdb)}
    rates = {k: [] for k in configs}
    loads = []
    with one_core():
        convert([heads[0].parent], tmp_path / "warm.zarr", progress=False)  # imports, numba caches
        for _ in range(1 if QUICK else 2):
            loads.append(os.getloadavg()[0])
            for name, (src, kw, count) in configs.items():
                out = tmp_path / "out.zarr"
                shutil.rmtree(out, ignore_errors=True)
                c0 = cpu_seconds()
                summary = convert(src, out, progress=False, **kw)
                rates[name].append(count / (cpu_seconds() - c0))
                assert summary.converted == count, (name, summary.skipped)
        x = np.random.default_rng(0).standard_normal((4096, 12 * LANES))
        t = _repeat(lambda: resample(x, 5, 4), repeat=5)
    wfdb_rate = float(np.median(rates["convert(WFDB PTB-XL 500 Hz)"]))
    rows = []
    for name, r in rates.items():
        s = summarize(r)
        rows.append({"stage": "convert hdf5", "path": name, "pattern": f"{configs[name][2]} exams, one core",
                     "ecg_s": s["median"], "ecg_s_min": s["min"], "ecg_s_iqr": s["iqr"], "runs": s["n"],
                     "x_wfdb": s["median"] / wfdb_rate, "loadavg_1min": loads})
    rows.append({"stage": "convert hdf5", "path": "polyphase.resample 400 -> 500 Hz (float64, = resample_poly)",
                 "pattern": f"groups of {LANES} exams", "us_per_ecg": 1e6 * float(np.median(t.cpu)) / LANES})
    print_table("convert hdf5: ECG per CPU-second, one core", rows,
                ["path", "pattern", "ecg_s", "ecg_s_iqr", "x_wfdb", "us_per_ecg"])
    record("store", rows)
    for p in [*tmp_path.glob("*.zarr"), folder, *map(Path, roots), *map(Path, roots400)]:  # ~4 GB: not left for pytest's retention
        shutil.rmtree(p, ignore_errors=True)
