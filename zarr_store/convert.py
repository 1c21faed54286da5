"""WFDB archives -> one Zarr v3 store: ``convert(sources, out, ...) -> ConvertSummary``.

How a conversion runs (each step restartable):
1. Discover the records of every source (RECORDS files or a walk for ``.hea``), in sorted order, and
   mark the conversion unfinished (``_convert/pending.json``: its fingerprint, id and first row).
2. Inspect each record (header, signal files, flat / all-NaN checks; zarr_store.records). Bad records
   go to the report; good ones get consecutive rows (several per long record, one per window). Rows
   are a pure function of the inputs, so every run of the same conversion assigns the same rows.
3. Shards: one task per shard of ``shard_size`` rows; a task reads and resamples its records, encodes
   one chunk per row and writes the whole shard file in one atomic put, then a done marker holding the
   digest of what the shard contains. A re-run skips shards whose marker digest matches, so a run
   killed at any moment ends, once re-run, with the same bytes as an uninterrupted run.
   In-process (workers=1) inspection and shard writing are interleaved: a shard is written as soon as
   its rows are known, while the samples inspection read are still in memory (each file read once).
   With workers > 1 (local processes) or ``dask`` (a cluster), inspection runs in parallel first, then
   the shard tasks, in any order; no two tasks share a file, so no locks.
4. Metadata arrays are made with their rows (a first conversion: their files written directly, the
   bytes zarr writes) or grow to the new row count and get their rows (through zarr), idempotent;
   then ``signals`` grows (its shape is the store's row count); provenance is appended to the
   group's ``conversions`` attribute; the report (``STORE/_convert/quarantine.json``, named by the
   ``quarantine`` attribute) is updated; markers are removed. zarr.json files are written from
   zarr's own templates (tests compare them with zarr's), without zarr's per-node machinery.
Sources and ``out`` may be local paths or fsspec URLs (memory:// is tested; local worker processes
cannot see this process's memory://, so such runs stay in-process).
Appending a second archive starts at the current row count; the shard that holds both old and new rows
is rebuilt from the old encoded chunks (copied, not re-encoded) plus the new ones. Re-running a finished
conversion (same sources and parameters) does nothing. One conversion at a time per store.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import hashlib
import json
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zarr_store import wfdb_io
from zarr_store.errors import BadArgumentError
from zarr_store.records import BadRecord, PlannedRecord, inspect_record, release_cache
from zarr_store.runner import Runner
from zarr_store.shard_writer import CODECS, ChunkCodec, StoreIO, meta_array_files
from zarr_store.tasks import ShardTask, run_shard_task

FORMAT_VERSION = 1
META = "_convert"
REPORT_KEY = f"{META}/quarantine.json"
PENDING_KEY = f"{META}/pending.json"
# 1-D metadata arrays: name -> (dtype, fill value)
META_ARRAYS = {
    "valid_length": ("int32", 0), "window_index": ("int32", 0), "record_id": (str, ""),
    "source": (str, ""), "orig_rate": ("float32", 0.0), "age": ("float32", math.nan),
    "sex": ("int8", -1), "labels": (str, ""), "strat_fold": ("int8", 0),
}
# Metadata arrays: small chunks (an append re-encodes only its tail; zarr pads the last chunk, and
# padding 65,536 strings cost ~10 ms per array) inside large shards (few files per million rows).
META_CHUNK, META_SHARD = 4096, 262144


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
        if not (self.window_s > 0 and self.window * 1.0 == self.rate * self.window_s):
            raise BadArgumentError(f"window_s: expected seconds giving a whole number of samples at "
                                   f"{self.rate} Hz, got {self.window_s!r}")
        if self.codec not in CODECS:
            raise BadArgumentError(f"codec: expected one of {', '.join(CODECS)}, got {self.codec!r}")
        if not (isinstance(self.shard_size, int) and self.shard_size > 0):
            raise BadArgumentError(f"shard_size: expected a positive integer, got {self.shard_size!r}")

    @property
    def window(self) -> int:
        return int(round(self.rate * self.window_s))


@dataclass
class ConvertSummary:
    """What a conversion did. ``skipped``: reason -> records; ``leads_present``: lead -> converted
    records that have it; ``dropped_signals``: signal name -> records it was dropped from."""

    store: str
    converted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    rows: int = 0
    rows_total: int = 0
    leads_present: dict[str, int] = field(default_factory=dict)
    dropped_signals: dict[str, int] = field(default_factory=dict)
    clipped_samples: int = 0
    invalid_samples: int = 0
    bytes_on_disk: int = 0
    signal_bytes: int = 0
    raw_bytes: int = 0
    compression_ratio: float = 0.0
    seconds: float = 0.0
    shards_written: int = 0
    shards_resumed: int = 0
    report: str = ""
    note: str = ""

    @property
    def records_per_s(self) -> float:
        return self.converted / self.seconds if self.seconds > 0 else 0.0

    def format(self) -> str:
        """The closing summary printed by ``crema-fast convert``."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        leads = " ".join(f"{k}:{v}" for k, v in self.leads_present.items())
        lines = [
            f"store          {self.store}",
            f"converted      {self.converted} records -> {self.rows} rows ({self.rows_total} in the store)",
            f"skipped        {sum(self.skipped.values())} ({skipped})" + (f"; report {self.report}" if self.skipped else ""),
            f"leads present  {leads}",
        ]
        if self.dropped_signals:
            lines.append("dropped        " + ", ".join(f"{k} x{v}" for k, v in sorted(self.dropped_signals.items())))
        if self.clipped_samples or self.invalid_samples:
            lines.append(f"samples        {self.clipped_samples} clipped to int16, {self.invalid_samples} no-data set to 0")
        lines += [
            f"bytes on disk  {self.bytes_on_disk / 1e6:.1f} MB (signals {self.signal_bytes / 1e6:.1f} MB)",
            f"compression    {self.compression_ratio:.2f}x over raw int16",
            f"time           {self.seconds:.1f} s ({self.records_per_s:.0f} records/s)"
            + (f", {self.shards_resumed} shards already done" if self.shards_resumed else ""),
        ]
        if self.note:
            lines.append(f"note           {self.note}")
        return "\n".join(lines)


def convert(sources, out, *, rate: int = 500, window_s: float = 10.0, workers: int = 1, dask=None,
            codec: str = "zstd", progress: bool = True, shard_size: int = 512,
            min_seconds: float = 1.0) -> ConvertSummary:
    """Convert WFDB archives (folders) into the store at ``out`` (a path or fsspec URL), appending when
    it already holds a store. See the module docstring for the steps; raises BadArgumentError for
    bad arguments, never for a bad record."""
    t0 = time.perf_counter()
    opts = ConvertOptions(rate, window_s, codec, shard_size, min_seconds)
    if not (isinstance(workers, int) and workers >= 1):
        raise BadArgumentError(f"workers: expected a positive integer, got {workers!r}")
    roots = _check_sources(sources)
    url = _check_out(out)
    io = StoreIO(url)
    batches, tables, n_records = _discover(roots, opts)  # before creating anything: may raise
    attrs, rows = _open_or_create(url, opts, io)
    fingerprint = _fingerprint(roots, opts)
    for conv in attrs.get("conversions", []):
        if conv.get("fingerprint") == fingerprint:
            _cleanup(io, conv["id"])  # a run killed after its provenance was written left these
            summary = _summary_of_store(io, rows, opts, ConvertSummary(url, report=_report_path(url)))
            summary.note = "these sources were already converted into this store with these parameters"
            summary.seconds = time.perf_counter() - t0
            return summary
    in_process = workers == 1 and dask is None
    if dask is None and workers > 1 and any(str(r).startswith("memory://") for r in [url, *roots]):
        in_process = True  # another process cannot see this process's memory filesystem
    pending = _read_json(io, PENDING_KEY)
    if pending is not None and pending["fingerprint"] != fingerprint:
        raise BadArgumentError(f"{url} has an unfinished conversion of {pending['sources']}; "
                               "run that conversion again to finish it first")
    if pending is None:
        start = rows
        conv_id = f"{fingerprint[:16]}-{start}"
        _write_json(io, PENDING_KEY, {"fingerprint": fingerprint, "id": conv_id, "start": start,
                                      "sources": [str(r) for r in roots]})
    else:
        start, conv_id = int(pending["start"]), pending["id"]
    with Runner(1 if in_process else workers, dask) as runner:
        done = {}
        for name in io.listdir(f"{META}/{conv_id}"):
            if name.startswith("shard-") and name.endswith(".json"):
                marker = _read_json(io, f"{META}/{conv_id}/{name}")
                done[marker["shard"]] = marker
        plan = _Plan(url, conv_id, start, opts, tables)
        from tqdm.auto import tqdm

        with tqdm(total=n_records, unit="rec", desc="convert", disable=not progress, smoothing=0.1,
                  dynamic_ncols=True) as bar:
            if in_process:
                _run_streaming(plan, batches, done, bar)
            else:
                _run_parallel(plan, batches, done, bar, runner)
        results = plan.results
        _write_metadata(io, plan.records, np.array(plan.first_rows + [plan.next_row], dtype=np.int64),
                        roots, opts)
    end, bad = plan.next_row, plan.bad
    summary = ConvertSummary(url, report=_report_path(url))
    plan_records = plan.records
    summary.converted, summary.rows = len(plan_records), end - start
    summary.skipped = dict(sorted(Counter(b.reason for b in bad).items()))
    summary.leads_present = {lead: sum(p.lead_idx[j] >= 0 for p in plan_records)
                             for j, lead in enumerate(wfdb_io.LEADS)}
    summary.dropped_signals = dict(sorted(Counter(n for p in plan_records for n in p.dropped).items()))
    summary.clipped_samples = sum(r["clipped"] for r in results)
    summary.invalid_samples = sum(r["invalid"] for r in results)
    summary.shards_written, summary.shards_resumed = plan.written, plan.resumed
    summary.seconds = time.perf_counter() - t0
    _finish(io, conv_id, fingerprint, roots, opts, summary, bad, start, end)
    return _summary_of_store(io, plan.next_row, opts, summary)


def _check_sources(sources) -> list:
    """Local folders as resolved Paths, fsspec URLs as strings."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise BadArgumentError("sources: expected at least one WFDB folder, got none")
    roots = []
    for s in sources:
        if wfdb_io.is_url(s):
            import fsspec

            fs, path = fsspec.core.url_to_fs(str(s))
            if not fs.isdir(path):
                raise BadArgumentError(f"source {s}: no such folder")
            roots.append(str(s).rstrip("/"))
            continue
        p = Path(str(s)[7:] if str(s).startswith("file://") else s)
        if not p.exists():
            raise BadArgumentError(f"source {p}: no such folder")
        if not p.is_dir():
            raise BadArgumentError(f"source {p}: expected a folder of WFDB records, got a file")
        roots.append(p.resolve())
    return roots


def _source_name(root) -> str:
    """The archive's name in the ``source`` array: its folder's name."""
    return str(root).rstrip("/").rsplit("/", 1)[-1]


def _check_out(out) -> str:
    url = str(out)
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    p = Path(url[7:] if url.startswith("file://") else url)
    if p.exists() and (not p.is_dir() or (any(p.iterdir()) and not (p / "zarr.json").is_file())):
        raise BadArgumentError(f"out {p}: exists and is not a store (expected a new path or a store)")
    return str(p.resolve())


def _open_or_create(url: str, opts: ConvertOptions, io: StoreIO) -> tuple[dict, int]:
    """The store's group attributes and row count; a new store is created (its zarr.json files
    written directly, as zarr writes them: zarr's machinery cost ~6 ms per conversion)."""
    import zarr

    if not io.exists("zarr.json"):  # a new store: the group first (a store from then on), then the rest
        attrs = {"format_version": FORMAT_VERSION, "rate": opts.rate, "window": opts.window,
                 "window_s": opts.window_s, "leads": list(wfdb_io.LEADS), "units": "uV", "codec": opts.codec,
                 "conversions": []}
        _write_node(io, "", _template("group"), attributes=attrs)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numcodecs.delta is outside the v3 spec: said in the docs
            group = zarr.open_group(url, mode="r+")
        attrs = dict(group.attrs)
        if attrs.get("format_version") is None:
            raise BadArgumentError(f"out {url}: a Zarr group that is not a crema-fast store")
    if attrs["format_version"] != FORMAT_VERSION:
        raise BadArgumentError(f"out {url}: store format {attrs['format_version']}, expected {FORMAT_VERSION}")
    if attrs["rate"] != opts.rate or attrs["window"] != opts.window:
        raise BadArgumentError(f"out {url}: store holds {attrs['rate']} Hz x {attrs['window']} samples, "
                               f"got rate={opts.rate} window={opts.window}")
    if not io.exists(f"{META}/zarr.json"):
        # A group of its own, so that zarr's listing of the store does not warn about our files.
        _write_node(io, META, _template("group"),
                    attributes={"about": "conversion plans, shard markers, quarantine.json"})
    signals = _read_json(io, "signals/zarr.json")
    if signals is None:
        template = _template("signals", opts.codec, opts.window, opts.shard_size)
        _write_node(io, "signals", template, shape=[0, 12, opts.window])
        return attrs, 0
    shard_rows = signals["chunk_grid"]["configuration"]["chunk_shape"][0]
    if attrs.get("codec") != opts.codec or shard_rows != opts.shard_size:
        raise BadArgumentError(f"out {url}: store uses codec {attrs.get('codec')} and shards of "
                               f"{shard_rows}, got codec={opts.codec} shard_size={opts.shard_size}")
    # The metadata arrays are created by _write_metadata, with their final shape: creating them
    # empty here and resizing them there cost ~30 ms per conversion (zarr writes each zarr.json).
    return attrs, int(signals["shape"][0])


@functools.lru_cache(maxsize=None)
def _template(kind: str, *key) -> dict:
    """zarr's own zarr.json of a node (made once per process in memory): "group", "signals" (codec,
    window, shard_size) or a metadata array's name. Its content is zarr's; only its shape and
    attributes are set here, so the files are those zarr writes (tested)."""
    import zarr
    from zarr.storage import MemoryStore

    files: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numcodecs.delta is outside the v3 spec: said in the docs
        if kind == "group":
            zarr.open_group(MemoryStore(files), mode="w")
            return json.loads(files["zarr.json"].to_bytes())
        if kind == "signals":
            codec, window, shard_size = key
            filters, compressors = ChunkCodec(codec, blocksize=12 * window * 2).zarr_codecs()
            spec = dict(shape=(0, 12, window), dtype="int16", chunks=(1, 12, window),
                        shards=(shard_size, 12, window), filters=filters, compressors=compressors,
                        fill_value=0, dimension_names=("row", "lead", "time"))
        else:
            spec = _meta_spec(kind, 0)
        zarr.create_array(MemoryStore(files), name="a", **spec)
    return json.loads(files["a/zarr.json"].to_bytes())


def _write_node(io: StoreIO, path: str, template: dict, **changes) -> None:
    """Write ``path``/zarr.json: ``template`` with ``changes``, serialized as zarr does."""
    import zarr

    meta = dict(template, **changes)
    key = f"{path}/zarr.json" if path else "zarr.json"
    io.write(key, json.dumps(meta, allow_nan=True, indent=zarr.config.get("json_indent")).encode())


def _direct_files(name: str, values: np.ndarray):
    import zarr

    return meta_array_files(_template(name), values, zarr.config.get("json_indent"))


def _meta_spec(name: str, rows: int) -> dict:
    """zarr.create_array arguments of metadata array ``name`` holding ``rows`` rows."""
    if name == "lead_mask":
        return dict(shape=(rows, 12), dtype="bool", chunks=(META_CHUNK, 12), shards=(META_SHARD, 12),
                    fill_value=False, dimension_names=("row", "lead"))
    dtype, fill = META_ARRAYS[name]
    return dict(shape=(rows,), dtype=dtype, chunks=(META_CHUNK,), shards=(META_SHARD,), fill_value=fill,
                dimension_names=("row",))


def _fingerprint(roots: list[Path], opts: ConvertOptions) -> str:
    text = json.dumps({"sources": [str(r) for r in roots], "options": asdict(opts)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _inspect_batch(args) -> list:
    source, root, names, rate, window, min_seconds = args
    return [inspect_record(source, root, name, rate, window, min_seconds) for name in names]


def _discover(roots: list[Path], opts: ConvertOptions):
    """Inspection batches (source, root, names, ...) in record order, PTB-XL tables, record count."""
    batches, tables, total = [], [], 0
    for s, root in enumerate(roots):
        names = wfdb_io.discover_records(root)
        if not names:
            raise BadArgumentError(f"source {root}: no WFDB records found (no RECORDS file, no .hea files)")
        tables.append(wfdb_io.find_ptbxl_table(root))
        total += len(names)
        step = 256
        batches += [(s, str(root), names[i : i + step], opts.rate, opts.window, opts.min_seconds)
                    for i in range(0, len(names), step)]
    return batches, tables, total


class _Plan:
    """Rows assigned in record order as inspections arrive; hands out each shard's task as soon as
    every row of the shard is assigned. A shard whose marker exists with the same task digest is
    skipped (resume)."""

    def __init__(self, url, conv_id, start, opts: ConvertOptions, tables):
        self.url, self.conv_id, self.start, self.opts, self.tables = url, conv_id, start, opts, tables
        self.records: list[PlannedRecord] = []
        self.first_rows: list[int] = []
        self.bad: list[BadRecord] = []
        self.next_row = start
        self.next_shard = start // opts.shard_size
        self.results: list[dict] = []
        self.written = self.resumed = 0

    def add(self, r: PlannedRecord | BadRecord) -> PlannedRecord | None:
        if isinstance(r, BadRecord):
            self.bad.append(r)
            return None
        table = self.tables[r.source]
        row = table.lookup(r.path) if table is not None else None
        if row is not None:  # PTB-XL's table wins over header comments
            r = r.with_meta(row.age, row.sex, row.labels, row.strat_fold)
        self.records.append(r)
        self.first_rows.append(self.next_row)
        self.next_row += r.n_windows
        return r

    def ready(self, final: bool = False) -> list[ShardTask]:
        """Tasks of the shards completed so far (all remaining shards when ``final``)."""
        size, tasks = self.opts.shard_size, []
        last = -(-self.next_row // size) if final else self.next_row // size
        while self.next_shard < last:
            k = self.next_shard
            lo, hi = k * size, min((k + 1) * size, self.next_row)
            a = max(bisect.bisect_right(self.first_rows, lo) - 1, 0)
            b = bisect.bisect_left(self.first_rows, hi)
            tasks.append(ShardTask(self.url, self.conv_id, k, size, lo, hi, self.start, self.opts.rate,
                                   self.opts.window, self.opts.codec, tuple(self.records[a:b]),
                                   tuple(self.first_rows[a:b])))
            self.next_shard += 1
        return tasks

    def is_done(self, task: ShardTask, done: dict) -> bool:
        marker = done.get(task.shard)
        if marker is not None and marker.get("digest") == task.digest:
            self.results.append(marker)
            self.resumed += 1
            return True
        return False

    def finished(self, result: dict) -> None:
        self.results.append(result)
        self.written += 1


def _records_ending(task: ShardTask) -> int:
    return sum(first + r.n_windows <= task.row_end for r, first in zip(task.records, task.first_rows)
               if first + r.n_windows > task.row_start)


def _run_streaming(plan: _Plan, batches, done: dict, bar) -> None:
    """In-process: inspect records in order and write each shard as soon as its rows are known, while
    its records' samples are still in memory (records.py keeps what inspection read), so each
    signal file is read once."""
    for source, root, names, rate, window, min_seconds in batches:
        for name in names:
            r = plan.add(inspect_record(source, root, name, rate, window, min_seconds, keep=True))
            if r is None:
                bar.update(1)
            for task in plan.ready():
                _run_one(plan, task, done, bar)
    for task in plan.ready(final=True):
        _run_one(plan, task, done, bar)
    release_cache()


def _run_one(plan: _Plan, task: ShardTask, done: dict, bar) -> None:
    if not plan.is_done(task, done):
        plan.finished(run_shard_task(task))
    bar.update(_records_ending(task))
    for r, first in zip(task.records, task.first_rows):
        if first + r.n_windows <= task.row_end:
            release_cache(r.path)


def _run_parallel(plan: _Plan, batches, done: dict, bar, runner: Runner) -> None:
    """Inspect everything in parallel, then run the shard tasks in parallel (any order)."""
    for results in runner.map(_inspect_batch, batches):
        for r in results:
            if plan.add(r) is None:
                bar.update(1)
    tasks = plan.ready(final=True)
    todo = []
    for task in tasks:
        if plan.is_done(task, done):
            bar.update(_records_ending(task))
        else:
            todo.append(task)
    ending = {t.shard: _records_ending(t) for t in todo}
    for result in runner.as_completed(run_shard_task, todo):
        plan.finished(result)
        bar.update(ending[result["shard"]])


def _write_metadata(io: StoreIO, plan: list[PlannedRecord], first_rows: np.ndarray, roots, opts) -> None:
    start, end = int(first_rows[0]), int(first_rows[-1])
    counts = np.array([p.n_windows for p in plan], dtype=np.int64)
    rec_of_row = np.repeat(np.arange(len(plan)), counts)
    window_index = np.arange(end - start) - np.repeat(first_rows[:-1] - start, counts)
    n_out = np.array([p.n_out for p in plan], dtype=np.int64)[rec_of_row]
    cols = {
        "valid_length": np.minimum(opts.window, n_out - window_index * opts.window).astype(np.int32),
        "window_index": window_index.astype(np.int32),
        "record_id": np.array([p.record_id for p in plan], dtype=object)[rec_of_row],
        "source": np.array([_source_name(roots[p.source]) for p in plan], dtype=object)[rec_of_row],
        "orig_rate": np.array([p.fs for p in plan], dtype=np.float32)[rec_of_row],
        "age": np.array([p.age for p in plan], dtype=np.float32)[rec_of_row],
        "sex": np.array([p.sex for p in plan], dtype=np.int8)[rec_of_row],
        "labels": np.array([p.labels for p in plan], dtype=object)[rec_of_row],
        "strat_fold": np.array([p.strat_fold for p in plan], dtype=np.int8)[rec_of_row],
    }
    cols["lead_mask"] = np.array([[i >= 0 for i in p.lead_idx] for p in plan], dtype=bool).reshape(-1, 12)[rec_of_row]
    cols = {k: v.astype(str) if v.dtype == object else v for k, v in cols.items()}
    # A metadata array missing here is created with its final shape (a first conversion, or a re-run
    # of one killed before this step): its files written directly (shard_writer.meta_array_files, the
    # bytes zarr writes), zarr.json last. An existing one (append, re-run) is resized through zarr.
    # Both idempotent.
    exists = {name: io.exists(f"{name}/zarr.json") for name in cols}
    if start == 0:
        for name, values in list(cols.items()):
            if not exists[name]:
                files = _direct_files(name, values)
                if files is not None:
                    for key, parts in files:
                        io.write(f"{name}/{key}", parts)
                    del cols[name]
    if cols:  # appending (or zarr refused the direct path): zarr writes these
        _write_with_zarr(io.url, cols, exists, start, end)
    # Last: a store's row count is the shape of signals.
    _grow(io, "signals", (end, 12, opts.window))


def _write_with_zarr(url: str, cols: dict, exists: dict, start: int, end: int) -> None:
    """Rows [start, end) of metadata arrays through zarr: existing ones resized, missing ones made."""
    import zarr

    group = zarr.open_group(url, mode="r+")
    async_group = getattr(group, "_async_group", None)

    async def one(name, values):
        shape = (end, *values.shape[1:])
        if exists[name]:
            arr = await async_group.getitem(name)
            await arr.resize(shape)
        else:
            arr = await async_group.create_array(name, **_meta_spec(name, end))
        if end > start:
            await arr.setitem(slice(start, end), values)

    def one_sync(name, values):
        if exists[name]:
            arr = group[name]
            arr.resize((end, *values.shape[1:]))
        else:
            arr = group.create_array(name, **_meta_spec(name, end))
        if end > start:
            arr[start:end] = values

    _on_zarr_loop([lambda name=name, v=v: one(name, v) for name, v in cols.items()]
                  if async_group is not None else None,
                  [lambda name=name, v=v: one_sync(name, v) for name, v in cols.items()])


def _grow(io: StoreIO, name: str, shape: tuple[int, ...]) -> None:
    """Set the shape of array ``name`` to ``shape`` (not smaller than its shape) in its zarr.json, as
    zarr's resize does when an array grows (it only rewrites zarr.json then), without its ~2 ms."""
    meta = json.loads(io.read(f"{name}/zarr.json"))
    if len(shape) != len(meta["shape"]) or any(a < b for a, b in zip(shape, meta["shape"])):
        raise ValueError(f"shape: expected at least {meta['shape']} for {name}, got {list(shape)}")
    _write_node(io, name, meta, shape=list(shape))


def _on_zarr_loop(coroutines, fallbacks) -> None:
    """Run zarr operations concurrently on zarr's own event loop (about half the time of one after
    the other: each waits on a file write); the sequential public API if zarr moved its helpers
    (``coroutines`` None)."""
    try:
        from zarr.core.sync import sync
        if coroutines is None:
            raise ImportError("zarr's async internals moved")
    except ImportError:
        for f in fallbacks:
            f()
        return

    async def gather():
        await asyncio.gather(*[make() for make in coroutines])

    sync(gather())

@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    """Versions of the packages that shape the store (importlib.metadata costs ~3 ms: looked up once)."""
    from importlib.metadata import version

    return {name: version(name) for name in ("zarr", "numcodecs", "wfdb", "numpy", "scipy")}


def _finish(io: StoreIO, conv_id, fingerprint, roots, opts, summary, bad, start, end) -> None:
    report = _read_json(io, REPORT_KEY) or {"records": []}
    # idempotent: a run killed after writing the report and re-run must not list its records twice
    report["records"] = [r for r in report["records"] if r.get("conversion") != conv_id]
    report["records"] += [{**asdict(b), "source": _source_name(roots[b.source]), "root": str(roots[b.source]),
                           "conversion": conv_id} for b in bad]
    report["counts"] = dict(sorted(Counter(r["reason"] for r in report["records"]).items()))
    _write_json(io, REPORT_KEY, report)
    provenance = {
        "id": conv_id, "fingerprint": fingerprint, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [str(r) for r in roots], "parameters": asdict(opts), "rows": [start, end],
        "records_converted": summary.converted, "skipped": summary.skipped,
        "leads_present": summary.leads_present, "dropped_signals": summary.dropped_signals,
        "clipped_samples": summary.clipped_samples, "invalid_samples": summary.invalid_samples,
        "seconds": round(summary.seconds, 3), "shards_resumed": summary.shards_resumed,
        "versions": _versions(),
    }
    # one update, one write of the group's zarr.json (zarr's attrs.update writes the same bytes)
    group = _read_json(io, "zarr.json")
    attrs = group["attributes"]
    attrs.update({"conversions": list(attrs.get("conversions", [])) + [provenance], "quarantine": REPORT_KEY})
    _write_node(io, "", group)
    _cleanup(io, conv_id)


def _cleanup(io: StoreIO, conv_id: str) -> None:
    pending = _read_json(io, PENDING_KEY)
    if pending is not None and pending["id"] == conv_id:
        io.remove_tree(PENDING_KEY)
    io.remove_tree(f"{META}/{conv_id}")


def _summary_of_store(io: StoreIO, n: int, opts: ConvertOptions, summary: ConvertSummary) -> ConvertSummary:
    summary.rows_total = n
    summary.bytes_on_disk = io.size()
    summary.signal_bytes = io.size("signals")
    summary.raw_bytes = n * 12 * opts.window * 2
    summary.compression_ratio = summary.raw_bytes / summary.signal_bytes if summary.signal_bytes else 0.0
    return summary


def _report_path(url: str) -> str:
    return f"{url}/{REPORT_KEY}"


def _write_json(io: StoreIO, key: str, obj) -> None:
    io.write(key, json.dumps(obj, sort_keys=True).encode())


def _read_json(io: StoreIO, key: str):
    data = io.read(key)
    return None if data is None else json.loads(data)
