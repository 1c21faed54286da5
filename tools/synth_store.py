"""A store of N synthetic rows made from real ECGs, so that a GPU machine builds its training data in
seconds instead of carrying it: ``python tools/synth_store.py N OUT [--seed S] [--workers W] ...``.

Sources: the real PTB-XL records in ../shared/data/ptbxl/records500 (500 records), or, in a plain
checkout, the 15 shipped in crema_fast/demo_data; ``--sources DIR ...`` names others (any WFDB folder
the converter reads). Each source is read once with the converter's own reader (zarr_store.records:
inspection, then ``record_signal``: int16 µV at the store rate, the store's lead order) and its first
window is kept (as float32: 120 MB for 500 PTB-XL records); sources shorter than the window, or that
the converter would skip, are left out.

The recipe (``Recipe``), per row r, drawn from ``numpy.random.default_rng([seed, shard])`` (so a
shard's rows depend on the seed and the shard only, not on ``workers``), in this order:
  a        dominant source, uniform over the S sources
  b        second source, uniform over the others (a itself when S = 1)
  w        weight of b, uniform in [0, mix]; a gets 1 - w (mix <= 0.5: a dominates)
  sa, sb   circular shifts, integers uniform in [0, T)
  s        time stretch, uniform in [stretch_lo, stretch_hi]
  g        per-lead gain, 1 + uniform(-gain, gain), shape (12,)
  row[l, t] = g[l] * ((1 - w) * xa[l, (sa + s t) mod T] + w * xb[l, (sb + s t) mod T])
where x[l, p] at a fractional p is linear interpolation between samples floor(p) and floor(p) + 1
(circularly), rounded half up and clipped to int16 (clipped samples counted). Leads the dominant source
lacks stay zero. With ``Recipe(stretch=(1, 1), gain=0, mix=0)`` a row is exactly
``np.roll(xa, -sa, axis=1)`` (``row_params`` gives a and sa), which is how the tests check that rows
are real ECGs and not noise.

Metadata: record ids ``synth-000001`` ..., source ``"synth"``, window index 0, valid length T, and
orig_rate, age, sex, labels, strat_fold, patient_id and lead_mask copied from the dominant source, so
label sets and splits work as on the source store; a source without a patient id gives its own
``source/record_id`` as the patient, so a patient-disjoint split is disjoint by source. The group's
``conversions`` attribute gets one provenance entry (``"tool": "synth_store"``: seed, N, recipe, the
source folders and record ids). The store is the converter's format, written by its machinery
(convert's group creation, ChunkEncoder + ShardFile for ``signals``, meta_io.write_metadata), so
StoreReader, ECGLoader and ``crema-fast info`` read it as a converted store.

A local OUT is built in a temporary folder beside it and renamed into place at the end: OUT never exists
half-written. An existing OUT is refused unless ``overwrite``. Speed (CPU time per PTB-XL row, 500 sources, one
core): the Numba kernel ~135 µs (~115 of them gathering the two sources; time-major sources made it ~2x
faster than gathering lead by lead), the converter's encoding ~185 µs; 50,000 rows took 17-19 s of CPU
(~2,600-2,900 rows per CPU-second). ``workers`` > 1 writes shards in parallel processes (a memory://
store is written in-process: workers would write into their own memory).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

import numba as nb  # noqa: E402
import numpy as np  # noqa: E402

from zarr_store.convert import ConvertOptions, open_or_create, store_versions  # noqa: E402
from zarr_store.errors import BadArgumentError  # noqa: E402
from zarr_store.meta_io import read_json, write_metadata, write_node  # noqa: E402
from zarr_store.paths import is_url, local_path  # noqa: E402
from zarr_store.records import N_LEADS, BadRecord, PlannedRecord, inspect_record, record_signal, release_cache  # noqa: E402
from zarr_store.runner import Runner  # noqa: E402
from zarr_store.shard_writer import ChunkCodec, ChunkEncoder, ShardFile, StoreIO  # noqa: E402
from zarr_store.sources import SourceTree, discover_records  # noqa: E402

SHARED_RECORDS = REPO.parent / "shared" / "data" / "ptbxl" / "records500"
DEMO_RECORDS = REPO / "crema_fast" / "demo_data" / "records500"
SOURCE = "synth"
BLOCK = 32  # rows synthesized at once, then encoded (a buffer used again: fresh memory costs page faults)


def default_sources() -> list[Path]:
    """The 500 shared PTB-XL records when present, else the 15 shipped demo records."""
    return [SHARED_RECORDS if SHARED_RECORDS.is_dir() else DEMO_RECORDS]


@dataclass(frozen=True)
class Recipe:
    """How rows are made (see the module docstring): time stretch range, per-lead gain jitter (+-),
    and the largest weight of the second source."""

    stretch: tuple[float, float] = (0.9, 1.1)
    gain: float = 0.1
    mix: float = 0.3

    def __post_init__(self):
        pair = isinstance(self.stretch, (tuple, list)) and len(self.stretch) == 2
        lo, hi = self.stretch if pair else (None, None)
        if not (pair and _num(lo) and _num(hi) and 0 < lo <= hi):
            raise BadArgumentError(f"stretch: expected (lo, hi) with 0 < lo <= hi, got {self.stretch!r}")
        object.__setattr__(self, "stretch", (float(lo), float(hi)))
        if not (_num(self.gain) and 0 <= self.gain < 1):
            raise BadArgumentError(f"gain: expected a number in [0, 1), got {self.gain!r}")
        if not (_num(self.mix) and 0 <= self.mix <= 0.5):
            raise BadArgumentError(f"mix: expected a number in [0, 0.5] (the first source dominates), "
                                   f"got {self.mix!r}")


def _num(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool) and np.isfinite(v)


@dataclass(frozen=True)
class Sources:
    """The source windows as the kernel reads them, ``time_major`` float32 (S, T, 12) µV (``signals``
    gives them as stored, int16 (S, 12, T)); ``lead_ok`` bool (S, 12), the leads each has; ``records``
    their PlannedRecords (PTB-XL table metadata applied); ``names`` "source/record_id"; ``skipped``
    reason -> count."""

    time_major: np.ndarray
    lead_ok: np.ndarray
    records: tuple[PlannedRecord, ...]
    names: tuple[str, ...]
    roots: tuple[str, ...]
    skipped: dict

    @property
    def signals(self) -> np.ndarray:
        """int16 (S, 12, T): the source windows as record_signal gave them (exact: int16 fits float32)."""
        return self.time_major.transpose(0, 2, 1).astype(np.int16)


@functools.lru_cache(maxsize=2)
def load_sources(roots: tuple[str, ...], rate: int = 500, window: int = 5000,
                 max_sources: int | None = None) -> Sources:
    """Read every record under ``roots`` once (sorted; the first ``max_sources`` usable ones when
    given), as the converter reads them. Cached per process (workers read their own copy once)."""
    signals, records, names, skipped = [], [], [], {}
    for root in roots:
        if not Path(root).is_dir():
            raise BadArgumentError(f"sources: expected a folder of WFDB records, got {root}")
        tree = SourceTree(root)
        for name in discover_records(Path(root)):
            if max_sources is not None and len(records) >= max_sources:
                break
            r = inspect_record(0, str(root), name, rate, window, 1.0, keep=True)
            try:
                if isinstance(r, BadRecord):
                    skipped[r.reason] = skipped.get(r.reason, 0) + 1
                    continue
                loc = tree.locate(name)
                row = loc.ptbxl_row()
                if row is not None:  # PTB-XL's table wins over header comments, as in convert
                    r = r.with_meta(row.age, row.sex, row.labels, row.strat_fold, row.patient_id)
                if not r.patient_id:  # each source its own patient: splits stay disjoint by source
                    r = r.with_meta(r.age, r.sex, r.labels, r.strat_fold, f"{loc.source}/{loc.record_id}")
                if r.n_out < window:
                    skipped["shorter than the window"] = skipped.get("shorter than the window", 0) + 1
                    continue
                signal, _ = record_signal(r, rate)
            finally:
                release_cache(os.path.join(str(root), name))  # the path inspect_record kept it under
            signals.append(np.ascontiguousarray(signal[:, :window]))
            records.append(r)
            names.append(f"{loc.source}/{loc.record_id}")
    if not records:
        raise BadArgumentError(f"sources: expected WFDB records of at least {window / rate:g} s in "
                               f"{', '.join(roots)}, found none (skipped: {skipped or 'none'})")
    stacked = np.stack(signals)  # the float32 copy below is what stays
    lead_ok = np.array([[i >= 0 for i in r.lead_idx] for r in records], dtype=bool)
    return Sources(np.ascontiguousarray(stacked.transpose(0, 2, 1), dtype=np.float32), lead_ok,
                   tuple(records), tuple(names), tuple(roots), skipped)


@dataclass(frozen=True)
class RowParams:
    """Per-row draws of one shard (R rows): source indices ``a`` (dominant), ``b``; weight ``w`` of b;
    integer shifts ``sa``, ``sb``; ``stretch``; ``gain`` (R, 12)."""

    a: np.ndarray
    b: np.ndarray
    w: np.ndarray
    sa: np.ndarray
    sb: np.ndarray
    stretch: np.ndarray
    gain: np.ndarray


def row_params(recipe: Recipe, seed: int, shard: int, n_rows: int, n_sources: int, window: int) -> RowParams:
    """The draws of shard ``shard``'s ``n_rows`` rows, in the order the module docstring lists."""
    rng = np.random.default_rng([seed, shard])
    a = rng.integers(n_sources, size=n_rows)
    b = (a + 1 + rng.integers(n_sources - 1, size=n_rows)) % n_sources if n_sources > 1 else a.copy()
    w = rng.uniform(0.0, recipe.mix, n_rows)
    sa, sb = rng.integers(window, size=(2, n_rows))
    stretch = rng.uniform(*recipe.stretch, n_rows)
    gain = 1.0 + rng.uniform(-recipe.gain, recipe.gain, (n_rows, N_LEADS))
    return RowParams(a, b, w, sa, sb, stretch, gain)


@nb.njit(cache=True, nogil=True, fastmath={"contract"})
def _synth_kernel(x, lead_ok, a, b, w, sa, sb, stretch, gain, out):
    """out[r] (12, T) int16 from the sources ``x`` float32 (S, T, 12), time-major: each position's 12
    leads are one contiguous load, so a row costs two gathers per sample time, not 24 (~2x faster than
    gathering lead by lead from (S, 12, T)). Returns the clipped samples."""
    T, L = x.shape[1], x.shape[2]
    ga = np.empty(L, np.float32)
    gb = np.empty(L, np.float32)
    mixed = np.empty((T, L), np.float32)
    clipped = 0
    for r in range(a.shape[0]):
        for lead in range(L):
            g = gain[r, lead] if lead_ok[a[r], lead] else 0.0  # leads the dominant source lacks stay 0
            ga[lead] = g * (1.0 - w[r])
            gb[lead] = g * w[r]
        s = stretch[r]
        xa, xb = x[a[r]], x[b[r]]
        for t in range(T):
            p = sa[r] + t * s
            i = int(p)  # p >= 0: floor
            f = np.float32(p - i)
            while i >= T:  # p < T + s T: a subtraction or two, no division
                i -= T
            i1 = i + 1 if i + 1 < T else 0
            q = sb[r] + t * s
            k = int(q)
            e = np.float32(q - k)
            while k >= T:
                k -= T
            k1 = k + 1 if k + 1 < T else 0
            for lead in range(L):
                va, vb = xa[i, lead], xb[k, lead]
                # exactly ga * va when the position is whole and w = 0 (int16 values are exact in float32)
                mixed[t, lead] = ga[lead] * (va + f * (xa[i1, lead] - va)) + gb[lead] * (vb + e * (xb[k1, lead] - vb))
        for lead in range(L):
            o = out[r, lead]
            for t in range(T):
                v = np.floor(mixed[t, lead] + np.float32(0.5))
                c = min(max(v, np.float32(-32768.0)), np.float32(32767.0))
                clipped += c != v  # branch-free: the loop stays vectorized (a branch here cost ~40%)
                o[t] = np.int16(c)
    return clipped


def synthesize(sources: Sources, params: RowParams, out: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """The rows ``params`` describe: int16 (R, 12, T) (written into ``out`` when given), and the count
    of clipped samples."""
    R, T = len(params.a), sources.time_major.shape[1]
    if out is None:
        out = np.empty((R, N_LEADS, T), dtype=np.int16)
    elif out.shape != (R, N_LEADS, T) or out.dtype != np.int16 or not out.flags.c_contiguous:
        raise ValueError(f"out: expected a C-contiguous int16 array of shape {(R, N_LEADS, T)}, "
                         f"got {out.dtype} {out.shape}")
    clipped = _synth_kernel(sources.time_major, sources.lead_ok, params.a, params.b, params.w,
                            params.sa.astype(np.float64), params.sb.astype(np.float64), params.stretch, params.gain, out)
    return out, int(clipped)


@dataclass(frozen=True)
class ShardJob:
    """One shard of ``signals`` to write: rows [row_start, row_end) of a store of shard_size-row shards."""

    url: str
    shard: int
    row_start: int
    row_end: int
    seed: int
    recipe: Recipe
    roots: tuple[str, ...]
    max_sources: int | None
    rate: int
    window: int
    codec: str
    shard_size: int


def write_shard(job: ShardJob, on_rows=None) -> dict:
    """Synthesize and write one shard file; returns {"shard", "a" (dominant source per row), "clipped"}.
    ``on_rows(n)`` is called as rows are encoded (progress)."""
    sources = load_sources(job.roots, job.rate, job.window, job.max_sources)
    n = job.row_end - job.row_start
    p = row_params(job.recipe, job.seed, job.shard, n, len(sources.records), job.window)
    encoder = ChunkEncoder(ChunkCodec(job.codec, blocksize=N_LEADS * job.window * 2))
    buf = np.empty((BLOCK, N_LEADS, job.window), dtype=np.int16)
    shard = ShardFile(StoreIO(job.url), f"signals/c/{job.shard}/0/0", job.shard_size)
    clipped = 0
    try:
        for lo in range(0, n, BLOCK):
            hi = min(lo + BLOCK, n)
            part = RowParams(*(getattr(p, f)[lo:hi] for f in RowParams.__dataclass_fields__))
            rows, c = synthesize(sources, part, buf[: hi - lo])
            clipped += c
            for i in range(hi - lo):
                shard.put(lo + i, encoder.encode(rows[i]))
            if on_rows is not None:
                on_rows(hi - lo)
        shard.commit()
    except BaseException:
        shard.abort()
        raise
    return {"shard": job.shard, "a": p.a.astype(np.int32), "clipped": clipped}


def synth_store(n, out, *, seed: int = 0, sources=None, recipe: Recipe = Recipe(), max_sources: int | None = None,
                rate: int = 500, window_s: float = 10.0, codec: str = "zstd", shard_size: int = 512,
                workers: int = 1, overwrite: bool = False, progress: bool = True) -> dict:
    """Write a store of ``n`` synthetic rows at ``out`` (a path or fsspec URL) from the records under
    ``sources`` (folders; default: default_sources()). Returns what it did: store, rows, shards,
    sources, clipped_samples, seconds. Raises BadArgumentError naming the argument for bad input."""
    t0 = time.perf_counter()
    if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1):
        raise BadArgumentError(f"N: expected a positive integer (rows), got {n!r}")
    if not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
        raise BadArgumentError(f"seed: expected a non-negative integer, got {seed!r}")
    if not (isinstance(workers, int) and workers >= 1):
        raise BadArgumentError(f"workers: expected a positive integer, got {workers!r}")
    if max_sources is not None and not (isinstance(max_sources, int) and max_sources >= 1):
        raise BadArgumentError(f"max_sources: expected a positive integer or None, got {max_sources!r}")
    if not isinstance(recipe, Recipe):
        raise BadArgumentError(f"recipe: expected a Recipe, got {type(recipe).__name__}")
    opts = ConvertOptions(rate, window_s, codec, shard_size)
    n, seed = int(n), int(seed)
    roots = tuple(str(Path(s).resolve()) for s in (sources if sources is not None else default_sources()))
    if not roots:
        raise BadArgumentError("sources: expected at least one folder of WFDB records, got none")
    final, build = check_out(out, overwrite)
    if build.startswith("memory://"):
        workers = 1
    src = load_sources(roots, opts.rate, opts.window, max_sources)  # before anything is written: may raise
    io = StoreIO(build)
    try:
        open_or_create(build, opts, io)
        jobs = [ShardJob(build, k, k * shard_size, min((k + 1) * shard_size, n), seed, recipe, roots, max_sources,
                         opts.rate, opts.window, codec, shard_size) for k in range(-(-n // shard_size))]
        dominant = np.empty(n, dtype=np.int32)
        clipped = 0
        from tqdm.auto import tqdm

        with tqdm(total=n, unit="row", desc="synth", disable=not progress, smoothing=0.1, dynamic_ncols=True) as bar:
            if workers == 1:
                results = (write_shard(j, bar.update) for j in jobs)
            else:
                runner = Runner(min(workers, len(jobs)), None).__enter__()
                results = runner.as_completed(write_shard, jobs)
            try:
                for res in results:
                    j = jobs[res["shard"]]
                    dominant[j.row_start : j.row_end] = res["a"]
                    clipped += res["clipped"]
                    if workers > 1:
                        bar.update(j.row_end - j.row_start)
            finally:
                if workers > 1:
                    runner.__exit__(None, None, None)
        _write_metadata(io, src, dominant, opts.window)
        seconds = time.perf_counter() - t0
        summary = {"store": final, "rows": n, "shards": len(jobs), "sources": len(src.records),
                   "sources_skipped": dict(src.skipped), "clipped_samples": clipped, "seconds": round(seconds, 3),
                   "workers": workers}
        _write_provenance(io, src, opts, seed, n, recipe, summary)
    except BaseException:
        if build != final:
            shutil.rmtree(build, ignore_errors=True)
        raise
    if build != final:
        if os.path.exists(final):  # overwrite: the old store goes only once the new one is complete
            shutil.rmtree(final)
        os.replace(build, final)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def check_out(out, overwrite: bool) -> tuple[str, str]:
    """(the store's final location, where it is built): a local store in a temporary folder beside it."""
    if not isinstance(out, (str, os.PathLike)) or not str(out):
        raise BadArgumentError(f"OUT: expected a path or fsspec URL, got {out!r}")
    if is_url(out):
        url = str(out).rstrip("/")
        io = StoreIO(url)
        if io.exists("zarr.json") or io.listdir(""):
            if not overwrite:
                raise BadArgumentError(f"OUT {url}: already exists (pass --overwrite to replace it)")
            io.remove_tree("")
        return url, url
    p = Path(local_path(out)).resolve()
    if p.exists() and not overwrite:
        raise BadArgumentError(f"OUT {p}: already exists (pass --overwrite to replace it)")
    if p.exists() and not (p.is_dir() and ((p / "zarr.json").is_file() or not any(p.iterdir()))):
        raise BadArgumentError(f"OUT {p}: exists and is not a store or an empty folder; not replacing it")
    if not p.parent.is_dir():
        raise BadArgumentError(f"OUT {p}: its folder {p.parent} does not exist")
    return str(p), str(p.with_name(f".tmp-{p.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"))


def _write_metadata(io: StoreIO, src: Sources, dominant: np.ndarray, window: int) -> None:
    """Every metadata array, through the converter's own write_metadata: one PlannedRecord per row
    (the dominant source's, renamed)."""
    n = len(dominant)
    digits = max(6, len(str(n)))
    plan = [src.records[a]._replace(record_id=f"{SOURCE}-{i + 1:0{digits}d}", path="", n=window, n_out=window,
                                     n_windows=1) for i, a in enumerate(dominant.tolist())]
    write_metadata(io, plan, np.arange(n + 1, dtype=np.int64), [SOURCE] * n, [p.record_id for p in plan], window)


def _write_provenance(io: StoreIO, src: Sources, opts: ConvertOptions, seed: int, n: int, recipe: Recipe,
                      summary: dict) -> None:
    provenance = {
        "id": f"synth-{seed}-{n}", "tool": "synth_store", "script": "tools/synth_store.py",
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seed": seed, "rows": [0, n],
        "recipe": {"stretch": list(recipe.stretch), "gain": recipe.gain, "mix": recipe.mix},
        "rng": "numpy default_rng([seed, shard]); draws a, b, w, sa, sb, stretch, gain (module docstring)",
        "parameters": asdict(opts), "sources": list(src.roots), "source_records": list(src.names),
        "sources_skipped": dict(src.skipped), "clipped_samples": summary["clipped_samples"],
        "seconds": summary["seconds"], "versions": {**store_versions(), "numba": nb.__version__},
    }
    group = read_json(io, "zarr.json")
    attrs = group["attributes"]
    attrs["conversions"] = list(attrs.get("conversions", [])) + [provenance]
    write_node(io, "", group)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="synth_store.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("N", help="rows to write")
    ap.add_argument("OUT", help="the new store (a path or fsspec URL)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sources", nargs="+", metavar="DIR", help="WFDB folders (default: %(default)s)",
                    default=[str(p) for p in default_sources()])
    ap.add_argument("--max-sources", type=int, default=None, help="use only the first K usable records")
    ap.add_argument("--stretch", type=float, nargs=2, metavar=("LO", "HI"), default=Recipe.stretch)
    ap.add_argument("--gain", type=float, default=Recipe.gain, help="per-lead gain jitter, +- (default %(default)s)")
    ap.add_argument("--mix", type=float, default=Recipe.mix, help="largest weight of the second record (default %(default)s)")
    ap.add_argument("--workers", type=int, default=1, help="processes writing shards (default 1)")
    ap.add_argument("--shard-size", type=int, default=512)
    ap.add_argument("--codec", default="zstd")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    try:
        try:
            n = int(args.N)
        except ValueError:
            raise BadArgumentError(f"N: expected a positive integer (rows), got {args.N!r}") from None
        s = synth_store(n, args.OUT, seed=args.seed, sources=args.sources, max_sources=args.max_sources,
                        recipe=Recipe(tuple(args.stretch), args.gain, args.mix), codec=args.codec,
                        shard_size=args.shard_size, workers=args.workers, overwrite=args.overwrite,
                        progress=not args.quiet)
    except BadArgumentError as exc:
        print(f"synth_store.py: error: {exc}", file=sys.stderr)
        return 2
    rate = s["rows"] / s["seconds"] if s["seconds"] else 0.0
    print(f"{s['store']}: {s['rows']} rows in {s['shards']} shards from {s['sources']} source records, "
          f"{s['seconds']:.2f} s ({rate:,.0f} rows/s, {rate / s['workers']:,.0f} per worker), "
          f"{s['clipped_samples']} clipped samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
