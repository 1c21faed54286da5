"""WFDB archives -> one Zarr v3 store: ``convert(sources, out, ...) -> ConvertSummary``.

Array inputs (CODE-15% folders, HDF5 datasets, .npy / .npz arrays: zarr_store.array_sources) take
the same steps through zarr_store.array_convert, with the same markers, report and provenance.

How a conversion runs (each step restartable):
1. Discover the records of every source (RECORDS files or a walk for ``.hea``), in sorted order, and
   name each after its database (zarr_store.sources: ``source`` and ``record_id``). Records the store
   already holds (same source and record id) and PTB-XL's lower-rate copies of an ECG converted at
   its higher rate are skipped (zarr_store.plan). Mark the conversion unfinished
   (``_convert/pending.json``: its fingerprint, id and first row).
2. Inspect each record (header, signal files, flat / all-NaN checks; zarr_store.records). Bad records
   go to the report; good ones get consecutive rows (several per long record, one per window). Rows
   are a pure function of the inputs, so every run of the same conversion assigns the same rows.
3. Shards: one task per shard of ``shard_size`` rows; a task reads and resamples its records, encodes
   one chunk per row and writes the whole shard file in one atomic put, then a done marker holding the
   digest of what the shard contains. A re-run skips shards whose marker digest matches, so a run
   killed at any moment ends, once re-run, with the same bytes as an uninterrupted run.
   In-process (workers=1) inspection and shard writing are interleaved: a shard is written as soon as
   its rows are known, while the samples inspection read are still in memory (each file read once).
   With workers > 1 (local processes) or ``dask`` (a cluster), rows are assigned from records
   predicted from their headers and file sizes, and each shard task inspects its records as it
   reads them, writing its shard only when they are as predicted (zarr_store.plan): each file is
   read once there too, tasks run in any order, no two share a file, so no locks.
4. Metadata arrays get their rows (zarr_store.meta_io), then ``signals`` grows (its shape is the
   store's row count); provenance is appended to the group's ``conversions`` attribute; the report
   (``STORE/_convert/quarantine.json``, named by the ``quarantine`` attribute) is updated; markers
   are removed.
Sources and ``out`` may be local paths or fsspec URLs. A ``memory://`` file system lives in this
process only, so conversions that read or write one always run in-process, whatever ``workers`` and
``dask`` say (worker processes would write into their own memory, and the store would stay empty).
Appending a second archive starts at the current row count; the shard that holds both old and new rows
is rebuilt from the old encoded chunks (copied, not re-encoded) plus the new ones. Re-running a finished
conversion (same sources and parameters) does nothing. One conversion at a time per store.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from zarr_store import mimic, wfdb_io
from zarr_store.array_sources import ArrayOptions, is_array_spec
from zarr_store.errors import BadArgumentError
from zarr_store.meta_io import grow, read_json, template, write_json, write_metadata, write_node
from zarr_store.paths import is_url, local_path, url_fs
from zarr_store.plan import ALREADY, Plan, run_parallel, run_streaming, select_records
from zarr_store.runner import Runner, frozen_heap
from zarr_store.shard_writer import CODECS, StoreIO
from zarr_store.sources import SourceTree, discover_records
from zarr_store.summary import ConvertSummary, Laps, fill_store_sizes
from zarr_store.tasks import warm_up

__all__ = ["convert", "ConvertOptions", "ConvertSummary", "REPORT_KEY", "PENDING_KEY", "FORMAT_VERSION"]

FORMAT_VERSION = 1
META = "_convert"
REPORT_KEY = f"{META}/quarantine.json"
PENDING_KEY = f"{META}/pending.json"


@dataclass(frozen=True)
class ConvertOptions:
    """Store rate in Hz, window in seconds (T = rate * window_s samples), codec, records per shard and
    the shortest record (and the shortest trailing window) kept, in seconds."""

    rate: int = 500
    window_s: float = 10.0
    codec: str = "zstd"
    shard_size: int = 512
    min_seconds: float = 1.0

    def __post_init__(self):
        if not (isinstance(self.rate, int) and self.rate > 0):
            raise BadArgumentError(f"rate: expected a positive integer (Hz), got {self.rate!r}")
        if not (isinstance(self.window_s, (int, float)) and math.isfinite(self.window_s) and self.window_s > 0):
            raise BadArgumentError(f"window_s: expected a positive number of seconds, got {self.window_s!r}")
        if self.window * 1.0 != self.rate * self.window_s:
            raise BadArgumentError(f"window_s: expected seconds giving a whole number of samples at "
                                   f"{self.rate} Hz, got {self.window_s!r}")
        if self.codec not in CODECS:
            raise BadArgumentError(f"codec: expected one of {', '.join(CODECS)}, got {self.codec!r}")
        if not (isinstance(self.shard_size, int) and self.shard_size > 0):
            raise BadArgumentError(f"shard_size: expected a positive integer, got {self.shard_size!r}")

    @property
    def window(self) -> int:
        return int(round(self.rate * self.window_s))


def convert(sources, out, *, rate: int = 500, window_s: float = 10.0, workers: int = 1, dask=None,
            codec: str = "zstd", progress: bool = True, shard_size: int = 512,
            min_seconds: float = 1.0, input_rate: float | None = None, leads=None, layout: str | None = None,
            units: str | None = None, ids: str | None = None) -> ConvertSummary:
    """Convert WFDB archives (folders) or array inputs (array_sources.is_array_spec; ``input_rate``,
    ``leads``, ``layout``, ``units``, ``ids`` describe them: array_sources.ArrayOptions) into the store
    at ``out`` (a path or fsspec URL), appending when it already holds a store. See the module
    docstring for the steps; raises BadArgumentError for bad arguments, never for a bad record."""
    t0 = time.perf_counter()
    opts = ConvertOptions(rate, window_s, codec, shard_size, min_seconds)
    if not (isinstance(workers, int) and workers >= 1):
        raise BadArgumentError(f"workers: expected a positive integer, got {workers!r}")
    specs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources or [])
    arrays = [is_array_spec(s) for s in specs]
    if any(arrays):
        if not all(arrays):
            wfdb = next(s for s, a in zip(specs, arrays) if not a)
            raise BadArgumentError(f"sources: expected all WFDB folders or all array inputs, got both ({wfdb})")
        from zarr_store.array_convert import convert_arrays

        array_opts = ArrayOptions(input_rate, tuple(leads) if leads is not None else None, layout, units, ids)
        return convert_arrays(specs, out, opts, array_opts, workers, dask, progress, t0)
    if any(v is not None for v in (input_rate, leads, layout, units, ids)):
        raise BadArgumentError("input_rate, leads, layout, units, ids: expected only with array inputs "
                               "(HDF5, .npy, .npz, CODE-15%), got WFDB folders")
    laps = Laps(t0)
    roots = _check_sources(sources)
    url = check_out(out)
    io = StoreIO(url)
    names = _discover(roots)  # before creating anything: may raise
    mimic_tables = mimic.find_tables(roots)  # MIMIC-IV-ECG's csv headers checked: may raise too
    laps.lap("discover")
    attrs, rows = open_or_create(url, opts, io)
    fingerprint = _fingerprint(roots, opts)
    summary = already_converted(io, url, attrs, rows, opts, fingerprint, t0)
    if summary is not None:
        return summary
    # memory:// lives in this process: worker processes (local or Dask) would write into their own.
    in_process = (workers == 1 and dask is None) or any(str(p).startswith("memory://") for p in [url, *roots])
    start, conv_id = mark_pending(io, url, fingerprint, rows, [str(r) for r in roots])
    laps.lap("open")
    if not in_process and dask in (None, "local"):
        # Before the workers are forked from this process, so that they inherit its imports.
        warm_up(opts.codec, opts.window)
        laps.lap("encoder")
    with frozen_heap(), Runner(1 if in_process else workers, None if in_process else dask, affine=True) as runner:
        laps.lap("workers")
        trees = [SourceTree(r) for r in roots]
        # Rows below ``start`` only: a re-run of a conversion killed after writing its metadata must not
        # take its own records for stored ones.
        selection = select_records(roots, names, trees, stored_ids(url, io, start), opts.rate, opts.window,
                                   opts.min_seconds)
        gc.freeze()  # the selection's objects too: they live as long as the conversion (frozen_heap)
        laps.lap("select")
        done = done_markers(io, conv_id)
        plan = Plan(url, conv_id, start, opts, selection.located)
        from tqdm.auto import tqdm

        written_for = []  # plan.version of the rows whose metadata is written

        def metadata() -> None:
            joined = mimic.join(plan, mimic_tables)  # subject ids as patient ids, study ids, times, reports
            write_metadata(io, plan.records, np.array(plan.first_rows + [plan.next_row], dtype=np.int64),
                           plan.sources, plan.record_ids, opts.window, extra=joined and joined.columns,
                           grow_signals=False)
            mimic.write_table(io, joined, start)
            written_for.append(plan.version)

        with tqdm(total=selection.n_records, unit="rec", desc="convert", disable=not progress, smoothing=0.1,
                  dynamic_ncols=True) as bar:
            if in_process:
                run_streaming(plan, selection.batches, done, bar)
            else:  # a first conversion's metadata written while the last shard tasks run (again if
                # they change the rows: written afresh, meta_io); an append's resizes arrays: after
                run_parallel(plan, selection.batches, done, bar, runner, while_last=metadata if start == 0 else None)
        laps.lap("records")  # in-process, the chunk encoder's first load (~15 ms) is in here
        if written_for[-1:] != [plan.version]:
            metadata()
        grow(io, "signals", (plan.next_row, 12, opts.window))  # last: the store's row count
        laps.lap("metadata")
    end, bad = plan.next_row, selection.duplicates + plan.bad
    summary = plan_summary(url, plan, bad, selection.already, end - start)
    if in_process and (workers > 1 or dask is not None):
        summary.note = "a memory:// store or source is visible to this process only: ran in-process"
    summary.seconds = time.perf_counter() - t0
    summary.phases = laps.seconds  # "finish" added in place below, after the provenance is written
    _finish(io, conv_id, fingerprint, roots, trees, opts, summary, bad, start, end)
    fill_store_sizes(io, plan.next_row, opts.window, summary)
    laps.lap("finish")
    return summary


def already_converted(io: StoreIO, url: str, attrs: dict, rows: int, opts: ConvertOptions, fingerprint: str,
                       t0: float) -> ConvertSummary | None:
    """The summary of a re-run of a finished conversion (same fingerprint): nothing to do; else None."""
    for conv in attrs.get("conversions", []):
        if conv.get("fingerprint") == fingerprint:
            cleanup_conversion(io, conv["id"])  # a run killed after its provenance was written left these
            io.remove_temps()
            summary = fill_store_sizes(io, rows, opts.window, ConvertSummary(url, report=_report_path(url)))
            summary.note = "these sources were already converted into this store with these parameters"
            summary.seconds = time.perf_counter() - t0
            return summary
    return None


def mark_pending(io: StoreIO, url: str, fingerprint: str, rows: int, sources: list[str]) -> tuple[int, str]:
    """(first row, conversion id): a new conversion is marked unfinished; a killed one (same
    fingerprint) continues with its own, and its writers' temporary files go (a shard file is one
    while it is streamed). Another unfinished conversion is a BadArgumentError."""
    pending = read_json(io, PENDING_KEY)
    if pending is not None and pending["fingerprint"] != fingerprint:
        raise BadArgumentError(f"{url} has an unfinished conversion of {pending['sources']}; "
                               "run that conversion again to finish it first")
    if pending is None:
        conv_id = f"{fingerprint[:16]}-{rows}"
        write_json(io, PENDING_KEY, {"fingerprint": fingerprint, "id": conv_id, "start": rows, "sources": sources})
        return rows, conv_id
    io.remove_temps()
    return int(pending["start"]), pending["id"]


def done_markers(io: StoreIO, conv_id: str) -> dict[int, dict]:
    """shard -> done marker, of the shards conversion ``conv_id`` finished so far."""
    done = {}
    for name in io.listdir(f"{META}/{conv_id}"):
        if name.startswith("shard-") and name.endswith(".json"):
            marker = read_json(io, f"{META}/{conv_id}/{name}")
            done[marker["shard"]] = marker
    return done


def plan_summary(url: str, plan: Plan, bad: list, already: int, rows: int) -> ConvertSummary:
    """The summary of what ``plan`` converted (WFDB and array paths alike): counts, skips by reason
    (``bad`` records and the ``already`` stored ones), leads present, dropped signals, samples clipped
    or invalid, shards written and resumed."""
    summary = ConvertSummary(url, report=_report_path(url))
    summary.converted, summary.rows = len(plan.records), rows
    skipped = Counter(b.reason for b in bad)
    if already:
        skipped[ALREADY] = already
    summary.skipped = dict(sorted(skipped.items()))
    layouts = Counter(p.lead_idx for p in plan.records)  # a few distinct ones: 12 passes over each, not the records
    summary.leads_present = {lead: sum(n for idx, n in layouts.items() if idx[j] >= 0)
                             for j, lead in enumerate(wfdb_io.LEADS)}
    summary.dropped_signals = dict(sorted(Counter(n for p in plan.records for n in p.dropped).items()))
    summary.clipped_samples = sum(r["clipped"] for r in plan.results)
    summary.invalid_samples = sum(r["invalid"] for r in plan.results)
    summary.shards_written, summary.shards_resumed = plan.written, plan.resumed
    return summary


def _check_sources(sources) -> list:
    """Local folders as resolved Paths, fsspec URLs as strings."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise BadArgumentError("sources: expected at least one WFDB folder, got none")
    roots = []
    for s in sources:
        if is_url(s):
            fs, path = url_fs(str(s))
            if not fs.isdir(path):
                raise BadArgumentError(f"source {s}: no such folder")
            roots.append(str(s).rstrip("/"))
            continue
        p = Path(local_path(s))
        if not p.exists():
            raise BadArgumentError(f"source {p}: no such folder")
        if not p.is_dir():
            raise BadArgumentError(f"source {p}: expected a folder of WFDB records, got a file")
        roots.append(p.resolve())
    return roots


def _not_a_store(url, got: str) -> BadArgumentError:
    return BadArgumentError(f"out {url}: expected a crema-fast store or a new path, got {got}")


def check_out(out) -> str:
    if is_url(out):
        return str(out).rstrip("/")
    p = Path(local_path(out))
    if p.exists() and not p.is_dir():
        raise _not_a_store(p, "a file")
    if p.is_dir() and not (p / "zarr.json").is_file() and any(p.iterdir()):
        raise _not_a_store(p, "a folder that is not a Zarr store")
    return str(p.resolve())


def open_or_create(url: str, opts: ConvertOptions, io: StoreIO) -> tuple[dict, int]:
    """The store's group attributes and row count; a new store is created (its zarr.json files
    written directly, as zarr writes them: zarr's machinery cost ~6 ms per conversion)."""
    try:
        group = read_json(io, "zarr.json")
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError is a ValueError
        raise _not_a_store(url, f"a zarr.json that is not JSON ({exc})") from None
    if group is None:  # a new store: the group first (a store from then on), then the rest
        attrs = {"format_version": FORMAT_VERSION, "rate": opts.rate, "window": opts.window,
                 "window_s": opts.window_s, "leads": list(wfdb_io.LEADS), "units": "uV", "codec": opts.codec,
                 "conversions": []}
        write_node(io, "", template("group"), attributes=attrs)
    else:
        if not isinstance(group, dict) or group.get("node_type") != "group":
            kind = group.get("node_type", "unknown") if isinstance(group, dict) else type(group).__name__
            raise _not_a_store(url, f"a Zarr node of type {kind}" if kind != "array" else "a Zarr array")
        attrs = dict(group.get("attributes") or {})
        if attrs.get("format_version") is None:
            raise _not_a_store(url, "a Zarr group without format_version")
    if attrs["format_version"] != FORMAT_VERSION:
        raise BadArgumentError(f"out {url}: store format {attrs['format_version']}, expected {FORMAT_VERSION}")
    if attrs.get("rate") != opts.rate or attrs.get("window") != opts.window:
        raise BadArgumentError(f"out {url}: store holds {attrs.get('rate')} Hz x {attrs.get('window')} samples, "
                               f"got rate={opts.rate} window={opts.window}")
    if not io.exists(f"{META}/zarr.json"):
        # A group of its own, so that zarr's listing of the store does not warn about our files.
        write_node(io, META, template("group"),
                   attributes={"about": "conversion plans, shard markers, quarantine.json"})
    try:
        signals = read_json(io, "signals/zarr.json")
    except (ValueError, UnicodeDecodeError) as exc:
        raise _not_a_store(url, f"a signals/zarr.json that is not JSON ({exc})") from None
    if signals is None:
        write_node(io, "signals", template("signals", opts.codec, opts.window, opts.shard_size),
                   shape=[0, 12, opts.window])
        return attrs, 0
    shard_rows = signals["chunk_grid"]["configuration"]["chunk_shape"][0]
    inner = [c.get("name") for c in signals["codecs"][0].get("configuration", {}).get("codecs", [])]
    if "crc32c" not in inner:  # new chunks carry a crc32c, which this store's zarr.json does not declare
        raise BadArgumentError(f"out {url}: store written before chunks carried a crc32c (its codecs "
                               f"{inner}); it still reads, but convert into a new store to add records")
    if attrs.get("codec") != opts.codec or shard_rows != opts.shard_size:
        raise BadArgumentError(f"out {url}: store uses codec {attrs.get('codec')} and shards of "
                               f"{shard_rows}, got codec={opts.codec} shard_size={opts.shard_size}")
    # The metadata arrays are created by write_metadata, with their final shape: creating them
    # empty here and resizing them there cost ~30 ms per conversion (zarr writes each zarr.json).
    return attrs, int(signals["shape"][0])


def stored_ids(url: str, io: StoreIO, rows: int) -> set[tuple[str, str]]:
    """(source, record_id) of the store's rows [0, rows)."""
    if rows == 0 or not (io.exists("source/zarr.json") and io.exists("record_id/zarr.json")):
        return set()
    import zarr

    group = zarr.open_group(url, mode="r")
    return set(zip(group["source"][:rows].tolist(), group["record_id"][:rows].tolist()))


def _fingerprint(roots: list, opts: ConvertOptions) -> str:
    text = json.dumps({"sources": [str(r) for r in roots], "options": asdict(opts)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _discover(roots: list) -> list[list[str]]:
    """Record names of each root (paths relative to it), sorted."""
    names = []
    for root in roots:
        found = discover_records(root)
        if not found:
            raise BadArgumentError(f"source {root}: no WFDB records found (no RECORDS file, no .hea files)")
        names.append(found)
    return names


@functools.lru_cache(maxsize=1)
def store_versions() -> dict[str, str]:
    """Versions of the packages that shape the store (importlib.metadata costs ~3 ms: looked up once)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("zarr", "numcodecs", "wfdb", "numpy", "scipy")}


def _finish(io: StoreIO, conv_id, fingerprint, roots, trees, opts, summary, bad, start, end) -> None:
    report = read_json(io, REPORT_KEY) or {"records": []}
    # idempotent: a run killed after writing the report and re-run must not list its records twice
    report["records"] = [r for r in report["records"] if r.get("conversion") != conv_id]
    for b in bad:
        loc = trees[b.source].locate(b.record_id)
        report["records"].append({**asdict(b), "source": loc.source, "record_id": loc.record_id,
                                  "root": str(roots[b.source]), "conversion": conv_id})
    report["counts"] = dict(sorted(Counter(r["reason"] for r in report["records"]).items()))
    write_json(io, REPORT_KEY, report)
    provenance = {
        "id": conv_id, "fingerprint": fingerprint, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [str(r) for r in roots], "parameters": asdict(opts), "rows": [start, end],
        "records_converted": summary.converted, "skipped": summary.skipped,
        "leads_present": summary.leads_present, "dropped_signals": summary.dropped_signals,
        "clipped_samples": summary.clipped_samples, "invalid_samples": summary.invalid_samples,
        "seconds": round(summary.seconds, 3), "shards_resumed": summary.shards_resumed,
        "phases": {k: round(v, 3) for k, v in summary.phases.items()},
        "versions": store_versions(),
    }
    # one update, one write of the group's zarr.json (zarr's attrs.update writes the same bytes)
    group = read_json(io, "zarr.json")
    attrs = group["attributes"]
    attrs.update({"conversions": list(attrs.get("conversions", [])) + [provenance], "quarantine": REPORT_KEY})
    write_node(io, "", group)
    cleanup_conversion(io, conv_id)


def cleanup_conversion(io: StoreIO, conv_id: str) -> None:
    pending = read_json(io, PENDING_KEY)
    if pending is not None and pending["id"] == conv_id:
        io.remove_tree(PENDING_KEY)
    io.remove_tree(f"{META}/{conv_id}")


def _report_path(url: str) -> str:
    return f"{url}/{REPORT_KEY}"
