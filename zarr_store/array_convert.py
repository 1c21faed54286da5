"""Array inputs -> the store: ``convert_arrays`` (called by zarr_store.convert.convert when its sources
are CODE-15% folders, HDF5 datasets or .npy / .npz arrays; see zarr_store.array_sources).

The steps and guarantees are the WFDB converter's (zarr_store.convert), with its pieces: the pending
marker and conversion id, ``Plan`` (rows in item order, one ShardTask per shard, markers with a
digest: a killed run, re-run, skips the shards it finished and ends with the same bytes), the
quarantine report and the provenance. What differs is what a record is: an ArrayRecord (an item of a
part: its index and valid span; array_records), whose row count is known only once its samples are
read (the valid span inside the zero padding), so the WFDB path's predict-from-headers scheme does
not apply:
- in-process (``_stream``): BLOCK items are read, inspected, given rows and encoded from the same
  samples (tasks.ShardStream), LANES items per resampler call; each item is read once;
- with workers or Dask: inspection tasks (array_records.inspect_block) return the rows of blocks of
  items, then shard tasks (``run_array_task``) read their items again and encode them. The second
  read costs ~40 µs an exam of the ~1,500 spent on it.
A part is never whole in memory.
Items already in the store (same source and record id) are skipped, and an id met twice in one
conversion is converted once (the second is quarantined as a duplicate).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, deque
from dataclasses import asdict

import numpy as np

from zarr_store import hdf5_io
from zarr_store.array_records import ArrayRecord, Block, block_signals, inspect_block, read_and_inspect
from zarr_store.array_sources import ArrayInput, ArrayOptions, parse_array_sources
from zarr_store.errors import BadArgumentError
from zarr_store.meta_io import read_json, write_json, write_metadata, write_node
from zarr_store.plan import ALREADY, Plan
from zarr_store.records import BadRecord, lead_plan
from zarr_store.runner import Runner, frozen_heap
from zarr_store.shard_writer import StoreIO
from zarr_store.summary import ConvertSummary, fill_store_sizes
from zarr_store.tasks import ShardStream, ShardTask, chunk_encoder, write_marker, open_shard, put_rows

INSPECT = 2048  # items per inspection task
DUPLICATE_ID = "duplicate id"


class ArrayPlan(Plan):
    """Plan of array items: rows in item order; the source name of each input is stored per row."""

    def __init__(self, url, conv_id, start, opts, names: list[str]):
        super().__init__(url, conv_id, start, opts, {})
        self.names = names

    def add(self, r):
        if isinstance(r, BadRecord):
            self.bad.append(r)
            return None
        self.records.append(r)
        self.sources.append(self.names[r.source])
        self.record_ids.append(r.record_id)
        self.first_rows.append(self.next_row)
        self.next_row += r.n_windows
        return r


def convert_arrays(specs: list, out, opts, array_opts: ArrayOptions, workers: int, dask, progress: bool,
                   t0: float) -> ConvertSummary:
    """See the module docstring; ``opts`` a convert.ConvertOptions. Raises BadArgumentError for bad
    arguments (a missing csv column, leads that do not fit the signal), never for a bad item."""
    from zarr_store import convert as c

    try:
        inputs = parse_array_sources(specs, array_opts)
        notes = [_check_leads(inp) for inp in inputs]
    finally:
        # Files are opened again where they are read: an HDF5 handle must not cross a fork into the
        # worker processes (HDF5 is not fork-safe), nor outlive a failed call.
        hdf5_io.close_all()
    url = c.check_out(out)
    io = StoreIO(url)
    attrs, rows = c.open_or_create(url, opts, io)
    fingerprint = _fingerprint(inputs, opts, array_opts)
    summary = c.already_converted(io, url, attrs, rows, opts, fingerprint, t0)
    if summary is not None:
        return summary
    start, conv_id = c.mark_pending(io, url, fingerprint, rows, [i.spec for i in inputs])
    blocks, parts, bad = _blocks(inputs, opts)
    stored = c.stored_ids(url, io, start)
    # memory:// lives in this process: worker processes would read and write their own (convert.convert)
    in_process = (workers == 1 and dask is None) or any(str(x).startswith("memory://")
                                                        for x in [url, *(i.spec for i in inputs)])
    plan = ArrayPlan(url, conv_id, start, opts, [i.source for i in inputs])
    plan.bad += bad
    from tqdm.auto import tqdm

    n_items = sum(b.hi - b.lo for b in blocks)
    try:
        with frozen_heap(), Runner(1 if in_process else workers, None if in_process else dask) as runner:
            done = c.done_markers(io, conv_id)
            if in_process:  # each block read once: inspected, then its rows encoded at once
                with tqdm(total=n_items, unit="ecg", desc="convert", disable=not progress,
                          dynamic_ncols=True) as bar:
                    already = _stream(plan, blocks, parts, stored, inputs, done, bar)
            else:
                with tqdm(total=n_items, unit="ecg", desc="inspect", disable=not progress,
                          dynamic_ncols=True) as bar:
                    already = _assign(plan, blocks, runner, stored, inputs, bar)
                tasks = [t for t in plan.ready(final=True) if not plan.is_done(t, done)]
                with tqdm(total=len(plan.records), unit="ecg", desc="convert", disable=not progress,
                          dynamic_ncols=True) as bar:
                    bar.update(len(plan.records) - sum(len(t.records) for t in tasks))
                    for result in runner.as_completed(run_array_task, [(t, parts) for t in tasks]):
                        bar.update(result.pop("records"))
                        plan.finished(result)
    finally:
        hdf5_io.close_all()
    write_metadata(io, plan.records, np.array(plan.first_rows + [plan.next_row], dtype=np.int64),
                   plan.sources, plan.record_ids, opts.window)
    summary = c.plan_summary(url, plan, plan.bad, already, plan.next_row - start)
    missing = sum(i.not_in_csv for i in inputs)
    notes += [f"{missing} exams have no row in exams.csv (no age, sex, labels)"] if missing else []
    if in_process and (workers > 1 or dask is not None):
        notes.append("a memory:// store or source is visible to this process only: ran in-process")
    summary.note = "; ".join(n for n in notes if n)
    summary.seconds = time.perf_counter() - t0
    _finish(io, conv_id, fingerprint, inputs, opts, array_opts, summary, plan.bad, start, plan.next_row)
    return fill_store_sizes(io, plan.next_row, opts.window, summary)


def _check_leads(inp: ArrayInput) -> str:
    """The lead names against the first block's limb leads (hdf5_io.check_limb_leads): a failing
    documented order is a BadArgumentError, a failing given one a note."""
    _, _, _, sel = lead_plan(inp.leads)
    if len(sel) == 0:
        raise BadArgumentError(f"leads: {inp.spec}: none of {','.join(inp.leads)} is a standard lead")
    part = next((p for p in inp.parts if not p.error and p.n), None)
    if part is None:
        return ""
    try:
        x = hdf5_io.read_block(part, 0, min(part.n, 64))
    except (OSError, ValueError):
        return ""  # the part's items are quarantined by inspection
    spans = list(zip(*hdf5_io.scan(x, sel)[:2]))
    why = hdf5_io.check_limb_leads(x, inp.leads, spans)
    if not why:
        return ""
    if inp.leads_from == "documented":
        raise BadArgumentError(f"leads: {part.name} is not in CODE-15%'s order {','.join(inp.leads)} "
                               f"({why}); give the order (--leads)")
    return f"{inp.source}: the limb leads named {','.join(inp.leads[:6])} fail {why}"


def _blocks(inputs: list[ArrayInput], opts) -> tuple[list[Block], dict, list[BadRecord]]:
    """Inspection tasks, the parts by global number, and the parts quarantined whole."""
    blocks, parts, bad = [], {}, []
    for s, inp in enumerate(inputs):
        for p, part in enumerate(inp.parts):
            if part.error:
                reason, _, detail = part.error.partition(": ")
                bad.append(BadRecord(s, part.name, reason, detail))
                continue
            gid = len(parts)
            parts[gid] = part
            ids, meta = tuple(inp.ids[p]), None if inp.meta[p] is None else tuple(inp.meta[p])
            blocks += [Block(s, gid, part, lo, min(lo + INSPECT, part.n), ids, meta, inp.fs, inp.uv, inp.leads,
                             opts.rate, opts.window, opts.min_seconds) for lo in range(0, part.n, INSPECT)]
    return blocks, parts, bad


def _accept(plan: ArrayPlan, r, seen: set, stored: set, inputs, counts: Counter) -> int | None:
    """Add inspection result ``r`` to the plan unless its (source, id) is stored (counted) or was met
    before in this conversion (quarantined as a duplicate); returns its first row when it got rows."""
    if isinstance(r, ArrayRecord):
        key = (inputs[r.source].source, r.record_id)
        if key in stored:
            counts[ALREADY] += 1
            return None
        if key in seen:
            r = BadRecord(r.source, r.record_id, DUPLICATE_ID, "an earlier item has the same id")
        seen.add(key)
    return plan.first_rows[-1] if plan.add(r) is not None else None


def _assign(plan: ArrayPlan, blocks: list[Block], runner: Runner, stored: set, inputs, bar) -> int:
    """Parallel runs: inspect every block (in parallel, results taken in order) and assign rows;
    returns the count of items already in the store."""
    seen, counts = set(stored), Counter()
    futures = [runner.submit(inspect_block, b) for b in blocks]
    for b, fut in zip(blocks, futures):
        for r in fut.result():
            _accept(plan, r, seen, stored, inputs, counts)
        bar.update(b.hi - b.lo)
    return counts[ALREADY]


def _stream(plan: ArrayPlan, blocks: list[Block], parts: dict, stored: set, inputs, done: dict, bar) -> int:
    """In-process runs: read hdf5_io.BLOCK items, inspect them, assign their rows and encode them from
    the same samples into their shards' files (tasks.ShardStream), finishing each shard once its rows
    are known; each item is read once (the parallel path reads it twice). Shards an earlier run
    finished (``done``) are checked by their marker's digest, and written again by run_array_task
    when it does not match. Returns the count of items already in the store."""
    opts = plan.opts
    stream = ShardStream(plan.url, opts.shard_size, plan.start, opts.rate, opts.window, opts.codec, set(done))
    seen, counts = set(stored), Counter()
    waiting: deque = deque()  # tasks whose rows are assigned, not all encoded yet

    def finish(tasks):
        for task in tasks:
            if task.shard in stream:
                plan.finished(stream.finish(task))
            elif not plan.is_done(task, done):
                result = run_array_task((task, parts))
                result.pop("records")
                plan.finished(result)

    try:
        for b in blocks:
            for lo in range(b.lo, b.hi, hdf5_io.BLOCK):
                hi = min(lo + hdf5_io.BLOCK, b.hi)
                x, results = read_and_inspect(b, lo, hi)
                got = [(r, first) for r in results
                       if (first := _accept(plan, r, seen, stored, inputs, counts)) is not None]
                if x is None:  # a read failed: the good items one by one
                    signals = [block_signals([r], hdf5_io.read_block(b.part, r.index, r.index + 1), r.index,
                                             opts.rate)[0] for r, _ in got]
                else:
                    signals = block_signals([r for r, _ in got], x, lo, opts.rate)
                waiting += plan.ready()
                for (r, first), signal in zip(got, signals):
                    stream.add(r, first, signal=signal)
                    # a shard is finished (marker written) as soon as its last row is encoded: a kill
                    # loses at most the shard being written
                    while waiting and waiting[0].row_end <= first + r.n_windows:
                        finish([waiting.popleft()])
                bar.update(hi - lo)
        finish([*waiting, *plan.ready(final=True)])
    finally:
        stream.close()
    return counts[ALREADY]


def run_array_task(args: tuple[ShardTask, dict]) -> dict:
    """Write the shard of ``task`` from its ArrayRecords (``parts``: global part number -> Part), then
    its marker; returns the marker plus ``records``: the records ending in it (progress)."""
    task, parts = args
    io = StoreIO(task.url)
    encoder = chunk_encoder(task.codec, task.window)
    clipped = invalid = ending = 0
    shard = open_shard(io, task.key, task.shard_size, task.shard * task.shard_size, task.first_new)
    try:
        for group, firsts in _runs(task):
            part = parts[group[0].part]
            i0 = group[0].index
            x = hdf5_io.read_block(part, i0, group[-1].index + 1)
            for rec, first, (signal, stats) in zip(group, firsts, block_signals(group, x, i0, task.rate)):
                if put_rows(shard, encoder, task, signal, first, rec.n_windows)[1]:
                    clipped += stats.clipped
                    invalid += stats.invalid
                    ending += 1
        shard.commit()
    except BaseException:
        shard.abort()
        raise
    return {**write_marker(io, task, clipped, invalid), "records": ending}


def _runs(task: ShardTask):
    """The task's records in runs of one part, at most hdf5_io.BLOCK items apart end to end."""
    group, firsts = [], []
    for rec, first in zip(task.records, task.first_rows):
        if group and (rec.part != group[0].part or rec.index - group[0].index >= hdf5_io.BLOCK
                      or rec.lead_idx != group[0].lead_idx):
            yield group, firsts
            group, firsts = [], []
        group.append(rec)
        firsts.append(first)
    if group:
        yield group, firsts


def _fingerprint(inputs: list[ArrayInput], opts, array_opts: ArrayOptions) -> str:
    text = json.dumps({"arrays": [i.spec for i in inputs], "options": asdict(opts),
                       "array_options": asdict(array_opts)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _finish(io, conv_id, fingerprint, inputs, opts, array_opts, summary, bad, start, end) -> None:
    """The quarantine report and the provenance, as zarr_store.convert._finish writes them."""
    from zarr_store import convert as c

    report = read_json(io, c.REPORT_KEY) or {"records": []}
    report["records"] = [r for r in report["records"] if r.get("conversion") != conv_id]
    for b in bad:
        report["records"].append({**asdict(b), "source": inputs[b.source].source, "root": inputs[b.source].spec,
                                  "conversion": conv_id})
    report["counts"] = dict(sorted(Counter(r["reason"] for r in report["records"]).items()))
    write_json(io, c.REPORT_KEY, report)
    provenance = {
        "id": conv_id, "fingerprint": fingerprint, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sources": [i.spec for i in inputs], "parameters": asdict(opts),
        "array_parameters": {**asdict(array_opts), "rates": [i.fs for i in inputs], "units": [i.units for i in inputs],
                             "leads": [list(i.leads) for i in inputs], "leads_from": [i.leads_from for i in inputs]},
        "rows": [start, end], "records_converted": summary.converted, "skipped": summary.skipped,
        "leads_present": summary.leads_present, "dropped_signals": summary.dropped_signals,
        "clipped_samples": summary.clipped_samples, "invalid_samples": summary.invalid_samples,
        "seconds": round(summary.seconds, 3), "shards_resumed": summary.shards_resumed,
        "versions": {**c.store_versions(), "h5py": _h5py_version()},
    }
    group = read_json(io, "zarr.json")
    attrs = group["attributes"]
    attrs.update({"conversions": list(attrs.get("conversions", [])) + [provenance], "quarantine": c.REPORT_KEY})
    write_node(io, "", group)
    c.cleanup_conversion(io, conv_id)


def _h5py_version() -> str:
    from importlib.metadata import version

    return version("h5py")
