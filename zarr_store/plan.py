"""Which records a conversion converts, which rows they get, and how their shard tasks run.

``select_records`` drops, before anything is read, the records the store already holds (same
``(source, record_id)``, see zarr_store.sources) and PTB-XL's lower-rate copies of an ECG whose
higher-rate file is converted too or already stored. ``Plan`` then assigns rows in record order as
inspections arrive and hands out each shard's task as soon as its rows are known; ``run_streaming``
(in-process) and ``run_parallel`` (processes, Dask) run them.

The parallel path reads each record once: rows are assigned from *predicted* records
(``predict_record``: the header and the signal files' sizes, ~26 µs a PTB-XL record; worker
processes predict in batches ahead of the shard tasks, see _predictions), and each shard task
inspects its records as it reads them and writes its shard only when every inspection agrees
(tasks.run_checked_task). A shard task goes to the worker that predicted its records, which kept
their parsed headers: each header is read once too (with one shared queue, read twice, the
workers spent 7-16% more CPU than one core). A record the prediction got wrong (flat or all no-data samples, a read
error: known only from the samples) stops new tasks; once the running ones are back the rows are
assigned again with what the tasks found, and only the shards whose content changed are written
again. Inspecting everything first (the earlier design) read every record twice and held the shard
tasks back until all inspections were in: two workers reached 1.3x one core.
"""

from __future__ import annotations

import bisect
import math
import os
from collections import deque
from dataclasses import dataclass

from zarr_store import sources, wfdb_io
from zarr_store.paths import is_url
from zarr_store.records import (N_LEADS, BadRecord, PlannedRecord, inspect_record, keep_header, lead_plan,
                                n_resampled, release_cache, windows_of)
from zarr_store.runner import Runner
from zarr_store.shard_writer import StoreIO
from zarr_store.sources import Located, SourceTree
from zarr_store.tasks import ShardStream, ShardTask, agrees, run_checked_task, run_shard_task

ALREADY = "already in store"
DUPLICATE = "duplicate (same ecg_id at another rate)"
SAME_ID = "duplicate record id"
BATCH = 256  # records per inspection task


@dataclass
class Selection:
    """Records to convert, as inspection batches ``(source index, root, names, rate, window,
    min_seconds)`` in record order; ``located[(source index, name)]``; the records skipped before
    inspection (duplicates, reported) and the count of those already in the store (not reported)."""

    batches: list[tuple]
    located: dict[tuple[int, str], Located]
    duplicates: list[BadRecord]
    already: int

    @property
    def n_records(self) -> int:
        return sum(len(b[2]) for b in self.batches)


def select_records(roots: list, names: list[list[str]], trees: list[SourceTree], stored: set[tuple[str, str]],
                   rate: int, window: int, min_seconds: float) -> Selection:
    """What to convert of the ``names`` found in each root, given the ``stored`` (source, record_id)
    pairs. Within one conversion a record reached through two roots (the same file) is converted once;
    two different files that get the same (source, record_id) (``a/mitdb/100`` and ``b/mitdb/100``)
    would be two rows no id tells apart, so the second is reported (SAME_ID) naming the first."""
    located, table_names = {}, {}
    for s, tree in enumerate(trees):
        for name in names[s]:
            loc = tree.locate(name)
            located[(s, name)] = loc
            if loc.table is not None:
                table_names.setdefault(id(loc.table), set()).add(loc.table_name)
    seen, duplicates, already, batches = set(stored), [], 0, []
    first: dict[tuple[str, str], tuple] = {}  # (source, record_id) -> (root, name) converted under it now
    for s, root in enumerate(roots):
        keep = []
        for name in names[s]:
            loc = located[(s, name)]
            key = (loc.source, loc.record_id)
            if key in seen:
                if key in first:  # paths resolved only on a collision (realpath: a syscall per component)
                    there, where = _record_path(*first[key]), _record_path(root, name)
                    if there != where:
                        duplicates.append(BadRecord(s, name, SAME_ID, f"{where} would be {key[0]}/{key[1]}, the id "
                                                    f"of {there} (converted); convert one of the folders into another store"))
                        continue
                already += 1
                continue
            hr = _higher_rate(loc, table_names, seen)
            if hr is not None:
                duplicates.append(BadRecord(s, name, DUPLICATE, f"{hr} holds the same ECG at a higher rate"))
                continue
            seen.add(key)
            first[key] = (root, name)
            keep.append(name)
        batches += [(s, str(root), keep[i : i + BATCH], rate, window, min_seconds)
                    for i in range(0, len(keep), BATCH)]
    return Selection(batches, located, duplicates, already)


def _record_path(root, name: str) -> str:
    """The record's file path without extension, symbolic links resolved (a URL: as given)."""
    root = str(root)
    return f"{root.rstrip('/')}/{name}" if is_url(root) else os.path.realpath(os.path.join(root, name))


def _higher_rate(loc: Located, table_names: dict, seen: set) -> str | None:
    """The higher-rate file of this record's ECG when this record is PTB-XL's lower-rate copy and that
    file is converted now or already stored; else None."""
    if loc.table is None or not loc.table.low_rate:
        return None
    lr = loc.table_name
    hr = loc.table.low_rate.get(lr)
    if hr is None:
        return None
    if hr in table_names.get(id(loc.table), ()):
        return hr
    if loc.record_id.endswith(lr):  # the stored id of the higher-rate file: same folder, its name
        if (loc.source, loc.record_id[: len(loc.record_id) - len(lr)] + hr) in seen:
            return hr
    return None


class Plan:
    """Rows assigned in record order as inspections arrive; hands out each shard's task as soon as
    every row of the shard is assigned. A shard whose marker exists with the same task digest is
    skipped (resume)."""

    def __init__(self, url, conv_id, start, opts, located: dict[tuple[int, str], Located]):
        self.url, self.conv_id, self.start, self.opts, self.located = url, conv_id, start, opts, located
        self.records: list[PlannedRecord] = []
        self.sources: list[str] = []
        self.record_ids: list[str] = []
        self.first_rows: list[int] = []
        self.bad: list[BadRecord] = []
        self.next_row = start
        self.next_shard = start // opts.shard_size
        self.results: list[dict] = []
        self.written = self.resumed = 0
        self.task_first: dict[int, int] = {}  # shard -> index in ``records`` of its task's first record
        self.version = 0  # counts resets: what was derived from the rows before one is stale

    def reset(self) -> None:
        """Forget every row assigned (run_parallel assigns them again after a wrong prediction)."""
        self.version += 1
        self.records, self.sources, self.record_ids, self.first_rows, self.bad = [], [], [], [], []
        self.next_row, self.next_shard = self.start, self.start // self.opts.shard_size
        self.task_first = {}

    def add(self, r: PlannedRecord | BadRecord) -> PlannedRecord | None:
        if isinstance(r, BadRecord):
            self.bad.append(r)
            return None
        loc = self.located[(r.source, r.record_id)]
        row = loc.ptbxl_row()
        if row is not None:  # PTB-XL's table wins over header comments
            r = r.with_meta(row.age, row.sex, row.labels, row.strat_fold, row.patient_id)
        self.records.append(r)
        self.sources.append(loc.source)
        self.record_ids.append(loc.record_id)
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
            self.task_first[k] = a
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


GROUP = 32  # records inspected before their rows are encoded (run_streaming) ...
GROUP_BYTES = 64 << 20  # ... or fewer, when their rows hold this many bytes (long records)


def run_streaming(plan: Plan, batches, done: dict, bar) -> None:
    """In-process, in record order: inspect GROUP records (fewer when long: GROUP_BYTES), then encode
    their rows into their shards' files (tasks.ShardStream), and finish each shard once all of its
    rows are known. Each signal file is read once, and its samples are held only until their group
    is encoded, in buffers used again (records._POOL). Holding a shard's worth of samples instead
    (512 x 120 kB for PTB-XL) cost up to 30 page faults per record; encoding each record as soon as
    it is read (GROUP = 1) was ~3% slower than in groups."""
    opts = plan.opts
    stream = ShardStream(plan.url, opts.shard_size, plan.start, opts.rate, opts.window, opts.codec, set(done))
    group: list[tuple[PlannedRecord, int]] = []
    group_bytes = 0

    def encode_group():
        nonlocal group_bytes
        done_now = 0
        for r, first in group:
            stream.add(r, first)
            if stream.covers(first, r.n_windows):
                release_cache(r.path)  # else run_shard_task may read it for a shard of an earlier run
            done_now += (first + r.n_windows - 1) // opts.shard_size in stream  # else counted by _run_one
        bar.update(done_now)
        group.clear()
        group_bytes = 0

    try:
        for source, root, names, rate, window, min_seconds in batches:
            for name in names:
                r = plan.add(inspect_record(source, root, name, rate, window, min_seconds, keep=True))
                if r is None:
                    bar.update(1)
                else:
                    group.append((r, plan.first_rows[-1]))
                    group_bytes += r.n_windows * N_LEADS * opts.window * 2
                tasks = plan.ready()
                if tasks or len(group) >= GROUP or group_bytes >= GROUP_BYTES:
                    encode_group()
                for task in tasks:
                    _run_one(plan, task, done, bar, stream)
        encode_group()
        for task in plan.ready(final=True):
            _run_one(plan, task, done, bar, stream)
    finally:
        stream.close()
        release_cache()


def _run_one(plan: Plan, task: ShardTask, done: dict, bar, stream: ShardStream) -> None:
    """Finish the shard of ``task``: a streamed one (its records were counted as they were encoded),
    or one an earlier run wrote (its marker checked, rewritten if it does not match)."""
    if task.shard in stream:
        plan.finished(stream.finish(task))
    else:
        if not plan.is_done(task, done):
            plan.finished(run_shard_task(task))
        bar.update(_records_ending(task))
    for r, first in zip(task.records, task.first_rows):
        if first + r.n_windows <= task.row_end:
            release_cache(r.path)


def predict_record(source: int, root: str, name: str, rate: int, window: int, min_seconds: float,
                   token: str | None = None) -> tuple[PlannedRecord | BadRecord, bool]:
    """(result, confirmed): the PlannedRecord that inspection will make of a record whose samples
    turn out fine, from its header and (local files) its signal files' sizes only; equal field for
    field, since it is the same code short of reading the samples. Records it cannot predict (a
    bad or missing header or file, no standard leads, too short, formats read through wfdb) are
    inspected here, in full: the result is then confirmed. ``token``: keep the header of a
    predicted record in this process under it (records.keep_header), for the shard task that
    inspects the record here."""
    path = os.path.join(root, name)
    try:
        header = wfdb_io.read_header(path + ".hea")
        if header.numpy_readable and header.fs > 0:
            if header.sig_len and is_url(path):  # a stat per file is a request on object storage
                n = header.sig_len
            else:
                n = wfdb_io.check_files(header, os.path.dirname(path))
            lead_idx, dropped, inverted, sel = lead_plan(header.facts.descriptions)
            min_samples = math.ceil(min_seconds * rate)
            n_out = n if header.fs == rate else n_resampled(n, header.fs, rate)
            if n and len(sel) and n_out >= min_samples:
                n_windows = windows_of(n_out, window, min_samples)
                meta = sources.comment_meta(header.comments) if header.comments else sources.RecordMeta()
                if token is not None:
                    keep_header(token, path, header)
                return PlannedRecord(source, name, path, float(header.fs), int(n), int(n_out), int(n_windows),
                                     lead_idx, dropped, inverted, False, meta.age, meta.sex, meta.labels,
                                     meta.strat_fold, meta.patient_id), False
    except Exception:  # inspect_record names it
        pass
    return inspect_record(source, root, name, rate, window, min_seconds), True


def predict_batch(args) -> list[tuple[PlannedRecord | BadRecord, bool]]:
    """predict_record of each name of ``(parts, rate, window, min_seconds, token)``, ``parts`` a
    sequence of ``(source, root, names)``."""
    parts, rate, window, min_seconds, token = args
    return [predict_record(s, root, name, rate, window, min_seconds, token) for s, root, names in parts
            for name in names]


AHEAD = 2  # prediction tasks (a shard's worth of records each) in flight per worker
DASK_SHARDS = 2  # ... two shards' worth on a Dask cluster, where each task costs the client ~7 ms of CPU


def _predictions(batches, runner: Runner, start: int, shard_size: int, token: str):
    """(result, confirmed, worker) per record in record order: worker processes predict every
    record, this process only when it converts in-process. A prediction task holds the records of
    one shard if each record were one row (``shard_size`` records, from one batch or several; two
    shards' on Dask), and the tasks go to the workers in turn, or to a local worker with fewer
    tasks waiting (``worker``; None: predicted here); each worker keeps the
    headers it parsed for the shard task that run_parallel then sends it (records.keep_header), so
    that each header is read once. Up to AHEAD tasks per worker are in flight, topped up as they
    are consumed, so that shard tasks start while later records are predicted and an archive's
    predictions are not all held at once. One task per shard rather than per batch of 256: a Dask
    client spends several ms on each.

    Why the workers: measured on 20,000 PTB-XL records with workers=2 (3 interleaved rounds),
    4.70-4.87 s and 8.9-9.2 s of CPU in all against 4.87-5.21 s and 9.2-9.9 s when predicted here,
    and 1.34-1.43 s against 1.35-1.63 s at 5,000 (all batches submitted first, then). Likely why
    (not measured apart): predicting here held the interpreter that the pool's threads in this
    process need to pass tasks and results."""
    n = max(runner.workers, 1)
    span = shard_size * (DASK_SHARDS if runner.client is not None else 1)  # records per prediction task

    def pieces():
        """(prediction task, worker): the records of one span-sized run, from one or more batches."""
        row, first, parts = start, start, []
        for s, root, names, rate, window, min_seconds in batches:
            i = 0
            while i < len(names):
                j = min(len(names), i + span - row % span)
                parts.append((s, root, names[i:j]))
                row, i = row + j - i, j
                if row % span == 0:
                    yield (tuple(parts), rate, window, min_seconds, token), (first // span) % n
                    first, parts = row, []
        if parts:
            yield (tuple(parts), rate, window, min_seconds, token), (first // span) % n

    feed, pending = pieces(), deque()

    def top_up() -> None:
        while len(pending) < AHEAD * n:
            b = next(feed, None)
            if b is None:
                return
            batch, worker = b
            if runner.parallel:
                worker = runner.least_loaded(worker)
                pending.append((runner.submit(predict_batch, batch, worker), worker))
            else:
                pending.append((batch, None))

    top_up()
    while pending:
        f, worker = pending.popleft()  # not kept once consumed: the results live on in run_parallel's entries
        results = predict_batch(f) if isinstance(f, tuple) else f.result()
        top_up()
        for result, confirmed in results:
            yield result, confirmed, worker


INFLIGHT = 2  # shard tasks submitted per worker: one running, one waiting in its queue
WAIT = -1  # run_parallel's worker_for: no worker is idle


def run_parallel(plan: Plan, batches, done: dict, bar, runner: Runner, while_last=None) -> None:
    """Shard tasks over predicted rows (see the module docstring), submitted in shard order as
    their rows are known, up to INFLIGHT per worker on average, each to the worker that predicted
    its records (see worker_for); ``while_last()`` is called once every task is submitted, while
    the last tasks run (this process is idle then; plan.version tells whether the rows changed
    after it: a wrong prediction found by one of them); each checks its records
    (tasks.run_checked_task). ``done``: markers of shards an earlier run wrote, trusted when their
    digest matches."""
    opts = plan.opts
    token = os.urandom(8).hex()  # this call's: see records.keep_header
    entries: list[list] = []  # per record, in record order: [result, confirmed, worker that predicted it]
    plan_entry: list[int] = []  # plan.records[i] is entries[plan_entry[i]]
    written = {k: (m, True) for k, m in done.items()}  # shard -> (marker, from an earlier run)
    used: dict[int, tuple[dict, bool]] = {}  # the same, for the shards of the rows as now assigned
    ending: dict[int, int] = {}  # shard -> records ending in it (progress)
    inflight: dict = {}  # future -> (task, index of its first record in plan.records, worker)
    busy = [0] * max(runner.workers, 1)  # shard tasks in flight per worker
    queue: deque = deque()  # (task, that index), ready to submit
    feed = _predictions(batches, runner, plan.start, opts.shard_size, token)
    limit = INFLIGHT * max(runner.workers, 1)
    n_records = sum(len(b[2]) for b in batches)
    state = {"shown": 0, "finished": 0}
    replan = exhausted = changed = False

    def progress() -> None:
        now = state["finished"] + len(plan.bad)
        if now > state["shown"]:  # after a new assignment of rows the count restarts: never down
            bar.update(now - state["shown"])
            state["shown"] = now

    def take(tasks) -> None:
        for task in tasks:
            ending[task.shard] = _records_ending(task)
            have = written.get(task.shard)
            if have is not None and have[0].get("digest") == task.digest:
                used[task.shard] = have
                state["finished"] += ending[task.shard]
            else:
                queue.append((task, plan.task_first[task.shard]))
        progress()

    def assign() -> None:
        """Rows again, from scratch, with what the tasks found."""
        plan.reset()
        plan_entry.clear()
        for k, (result, _, _) in enumerate(entries):
            if plan.add(result) is not None:
                plan_entry.append(k)

    def endgame() -> bool:
        """True when about INFLIGHT tasks per worker are left (if the records still to predict
        are as many rows each as those so far): each then goes to the first worker that is free."""
        if exhausted:
            return True
        rows_each = (plan.next_row - plan.start) / max(len(entries), 1)
        left = len(queue) + (n_records - len(entries)) * rows_each / opts.shard_size
        return left < INFLIGHT * len(busy)

    def worker_for(task: ShardTask, a: int) -> int | None:
        """The worker that predicted the task's middle record while it has fewer than INFLIGHT
        tasks (1 for the last tasks: endgame), else an idle one, else none yet (WAIT: the task
        waits for the next result). Moving a task whenever its worker was full sent most of them
        to the worker without their headers (90% read twice at 20,000 records); sending it to its
        full worker anyway, the last tasks queued on one worker while the other was idle (0.7 s at
        20,000 records on a VM whose cores ran at different speeds)."""
        w = entries[plan_entry[a + len(task.records) // 2]][2] if task.records else None
        if w is None or busy[w] < (1 if endgame() else INFLIGHT):
            return w
        free = min(range(len(busy)), key=busy.__getitem__)
        return free if busy[free] == 0 else WAIT

    while True:
        while not replan and len(inflight) < limit:
            if queue:
                task, a = queue[0]
                w = worker_for(task, a)
                if w == WAIT:
                    break
                queue.popleft()
                if w is not None:
                    busy[w] += 1
                inflight[runner.submit(run_checked_task, (task, opts.min_seconds, token), w)] = (task, a, w)
            elif exhausted:
                break
            else:
                for item in feed:  # predict until the next shard's rows are known
                    entries.append(list(item))
                    if plan.add(item[0]) is not None:
                        plan_entry.append(len(entries) - 1)
                    tasks = plan.ready()
                    if tasks:
                        take(tasks)
                        break
                else:
                    exhausted = True
                    take(plan.ready(final=True))
        if while_last is not None and exhausted and not queue and not replan and inflight:
            while_last()
            while_last = None
        if not inflight:
            if not replan:
                break
            replan = changed = False
            assign()
            queue.clear()  # tasks of the rows as assigned before: take() makes the new ones
            used.clear()
            ending.clear()
            state["finished"] = 0
            take(plan.ready(final=exhausted))
            continue
        for fut in runner.wait_first(inflight):
            task, a, w = inflight.pop(fut)
            if w is not None:
                busy[w] -= 1
            result = fut.result()
            for k, real in result["changed"]:
                entry = entries[plan_entry[a + k]]
                if not entry[1]:
                    replan |= not agrees(entry[0], real)
                    entry[0] = real
                    changed = True
            for k in range(len(task.records)):
                entries[plan_entry[a + k]][1] = True
            if result["marker"] is not None:
                written[task.shard] = (result["marker"], False)
                if not replan:  # else kept for the new rows if its digest still matches
                    used[task.shard] = written[task.shard]
                    state["finished"] += ending[task.shard]
                    progress()
    if changed:  # the records as inspected (a resumed shard's were inspected when it was written)
        assign()
    assert len(used) == len(ending), "every shard of the rows is written"
    n_shards = -(-plan.next_row // opts.shard_size)
    io = StoreIO(plan.url)
    for k in written:
        if k >= n_shards:  # rows a wrong prediction shifted past the end: not the store's
            io.remove_tree(f"signals/c/{k}/0/0")
            io.remove_tree(f"_convert/{plan.conv_id}/shard-{k}.json")
    plan.results = [used[k][0] for k in sorted(used)]
    plan.resumed = sum(1 for _, old in used.values() if old)
    plan.written = len(used) - plan.resumed
