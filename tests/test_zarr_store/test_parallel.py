"""The parallel converter (zarr_store.plan.run_parallel, tasks.run_checked_task): rows from predicted
records, each record read and encoded once, wrong predictions (flat, all-NaN records) repaired, the
same store as in-process, resumable after a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.test_zarr_store.archives import BAD_KINDS, assert_same_arrays, load, write_archive, write_record
from zarr_store.convert import REPORT_KEY, convert

REPO = Path(__file__).resolve().parents[2]
HEADER_KINDS = ("truncated", "missing signal file", "malformed header", "too short", "missing header",
                "no standard leads", "unreadable")  # found from headers and file sizes: predicted


def _archive_with_flats(root: Path, n: int = 30):
    """``n`` good records, one of every bad kind (before them in record order), and a flat and an
    all-NaN record among the good ones: wrong predictions early and in the middle."""
    arch = write_archive(root, n=n, fs=250, seconds=10.0, bad=BAD_KINDS)
    write_record(root, "good007_flat", np.full((2500, 12), 0.25), 250)
    write_record(root, "good019_flat", np.full((2500, 12), -1.0), 250)
    names = sorted([*arch.good, *arch.bad, "good007_flat", "good019_flat"])
    (root / "RECORDS").write_text("".join(f"{r}\n" for r in names))
    return arch


def _files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted((store / "signals").rglob("*")) if p.is_file()}


def _reasons(store: Path) -> list:
    report = json.loads((store / REPORT_KEY).read_text())
    return sorted((r["record_id"], r["reason"], r["detail"]) for r in report["records"])


@pytest.mark.parametrize("shard_size", [4, 7])
def test_wrong_predictions_give_the_in_process_store(tmp_path, shard_size):
    """Flat and all-NaN records shift every later row after their shard task reports them: the store
    (arrays, every file under signals/, nothing past the end), summary and report equal in-process."""
    arch = _archive_with_flats(tmp_path / "arch")
    one = convert([arch.root], tmp_path / "one.zarr", progress=False, shard_size=shard_size)
    two = convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=shard_size, workers=2)
    assert one.converted == two.converted == 30 and one.rows == two.rows == 30
    assert two.skipped == one.skipped and one.skipped["flat"] == 3 and one.skipped["all-NaN"] == 1
    assert two.shards_written == one.shards_written == -(-30 // shard_size)
    assert two.leads_present == one.leads_present and two.clipped_samples == one.clipped_samples
    assert_same_arrays(load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr"))
    assert _files(tmp_path / "one.zarr") == _files(tmp_path / "two.zarr")
    assert _reasons(tmp_path / "one.zarr") == _reasons(tmp_path / "two.zarr")
    assert not list((tmp_path / "two.zarr" / "_convert").glob("*/shard-*.json"))


def test_each_record_read_and_encoded_once(tmp_path, monkeypatch):
    """With bad records that headers and file sizes reveal, the parallel path (its tasks run here:
    the pool replaced by in-process calls, so the counts are visible) reads each good record's signal
    file once and encodes each row once; the planner reads headers only."""
    import zarr_store.records as records
    import zarr_store.runner as runner
    import zarr_store.shard_writer as sw
    import zarr_store.wfdb_io as wfdb_io

    arch = write_archive(tmp_path / "arch", n=13, fs=500, seconds=10.0, bad=HEADER_KINDS)
    monkeypatch.setattr(runner.Runner, "__enter__", lambda self: self)  # workers=2, no pool: in-process
    monkeypatch.setattr(records, "_HEADERS", {})  # none left by earlier tests in this process
    reads, encodes, headers = [], [], []
    real_read, real_encode, real_header = wfdb_io.read_digital, sw.ChunkEncoder.encode, wfdb_io.read_header
    monkeypatch.setattr(wfdb_io, "read_digital", lambda h, *a, **k: reads.append(h.name) or real_read(h, *a, **k))
    monkeypatch.setattr(sw.ChunkEncoder, "encode", lambda self, c: encodes.append(1) or real_encode(self, c))
    monkeypatch.setattr(wfdb_io, "read_header", lambda p: headers.append(Path(p).stem) or real_header(p))
    got = convert([arch.root], tmp_path / "s.zarr", progress=False, shard_size=4, workers=2)
    # the bad records the planner inspects in full ("truncated") read their file there, once
    assert sorted(r for r in reads if r.startswith("good")) == arch.good
    # a good record's header is read once: the shard task inspects it with the header its
    # prediction kept (records.keep_header), and nothing is left kept once the tasks are done
    assert sorted(h for h in headers if h.startswith("good")) == arch.good
    assert not records._HEADERS
    assert len(encodes) == got.rows == 13
    monkeypatch.undo()
    ref = convert([arch.root], tmp_path / "ref.zarr", progress=False, shard_size=4)
    assert got.skipped == ref.skipped and len(got.skipped) == len(HEADER_KINDS)
    assert_same_arrays(load(tmp_path / "s.zarr"), load(tmp_path / "ref.zarr"))
    assert _files(tmp_path / "s.zarr") == _files(tmp_path / "ref.zarr")


def test_append_with_workers_equals_in_process(tmp_path):
    """A second archive appended by worker processes: the shard holding old and new rows is rebuilt
    from the old chunks, as in-process."""
    a = write_archive(tmp_path / "a", n=6, fs=500, bad=())
    b = _archive_with_flats(tmp_path / "b", n=9)
    for name, workers in (("one", 1), ("two", 2)):
        convert([a.root], tmp_path / f"{name}.zarr", progress=False, shard_size=4)
        convert([b.root], tmp_path / f"{name}.zarr", progress=False, shard_size=4, workers=workers)
    assert_same_arrays(load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr"))
    assert _files(tmp_path / "one.zarr") == _files(tmp_path / "two.zarr")


_KILLED_RUN = """
import sys, time
import zarr_store.tasks as tasks
real = tasks.ShardFile.commit
def slow(*a, **k):
    time.sleep(0.15)  # slow shards, so that the kill lands mid-run
    return real(*a, **k)
tasks.ShardFile.commit = slow  # the workers are forked: they have it too
from zarr_store.convert import convert
convert([sys.argv[1]], sys.argv[2], progress=False, shard_size=4, workers=2)
"""


def test_parallel_resume_after_sigkill_equals_uninterrupted(tmp_path):
    """Killed with two workers once shards are done (a wrong prediction early on: some shards were
    written for shifted rows), then re-run with two workers: the in-process store, byte for byte."""
    arch = _archive_with_flats(tmp_path / "arch")
    ref = tmp_path / "ref.zarr"
    convert([arch.root], ref, progress=False, shard_size=4)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(arch.root), str(out)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("_convert/*/shard-*.json"))) < 2:
            assert proc.poll() is None, "the conversion ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "_convert" / "pending.json").exists()
    time.sleep(0.3)  # the workers die with their parent (PR_SET_PDEATHSIG): nothing lands later
    summary = convert([arch.root], out, progress=False, shard_size=4, workers=2)
    assert summary.converted == 30 and summary.shards_resumed + summary.shards_written == 8
    assert not list(out.rglob(".tmp-*"))
    assert_same_arrays(load(out), load(ref))
    assert _files(out) == _files(ref)


class _Recorder:
    """A Runner of two "workers" that runs each task here at once and notes where it was sent."""

    workers, parallel, pool, client = 2, True, None, None

    def __init__(self):
        self.sent = []  # (function name, task argument, worker)

    def submit(self, fn, x, worker=None):
        from concurrent.futures import Future

        self.sent.append((fn.__name__, x, worker))
        fut = Future()
        fut.set_result(fn(x))
        return fut

    def wait_first(self, futures):
        return list(futures)

    def least_loaded(self, prefer):
        return prefer


def test_shard_tasks_go_to_the_worker_that_predicted_their_records(tmp_path, monkeypatch):
    """Predictions go to the workers in turn, a shard's worth of records each, and each shard task to
    the worker that predicted its records, where their headers wait (records.keep_header): with
    two sources of 11 records and shards of 4, the cuts fall inside the sources."""
    from zarr_store.plan import Plan, run_parallel, select_records
    from zarr_store.convert import ConvertOptions
    from zarr_store.sources import SourceTree, discover_records
    import zarr_store.records as records

    roots = [write_archive(tmp_path / f"a{k}", n=11, fs=500, bad=()).root for k in range(2)]
    trees = [SourceTree(r) for r in roots]
    names = [discover_records(r) for r in roots]
    opts = ConvertOptions(500, 10.0, "zstd", 4, 1.0)
    sel = select_records(roots, names, trees, set(), opts.rate, opts.window, opts.min_seconds)
    url = str(tmp_path / "s.zarr")
    convert([roots[0]], url, progress=False, shard_size=4)  # a store to write shards into (rows appended)
    plan = Plan(url, "test", 11, opts, sel.located)
    runner = _Recorder()
    monkeypatch.setattr(records, "_HEADERS", {})  # none left by earlier tests in this process

    class Bar:
        def update(self, n):
            pass

    run_parallel(plan, sel.batches, {}, Bar(), runner)
    predicted = {}  # record path -> worker
    for fn, x, w in runner.sent:
        if fn == "predict_batch":
            for s, root, batch in x[0]:
                predicted.update({f"{root}/{n}": w for n in batch})
    shards = [(x[0], w) for fn, x, w in runner.sent if fn == "run_checked_task"]
    # rows 11..32: shard 2 holds rows 11 (one record), shard 3 rows 12-15, ... shard 8 rows 32
    assert [t.shard for t, _ in shards] == list(range(2, 9))
    assert [w for t, w in shards] == [t.shard % 2 for t, _ in shards]
    for t, w in shards:
        assert {predicted[r.path] for r in t.records} == {w}
    assert plan.next_row == 33 and not records._HEADERS  # every kept header taken by its shard task


def test_wrong_prediction_in_the_last_shard_rewrites_the_metadata(tmp_path, monkeypatch):
    """The metadata is written while the last shard tasks run (convert's while_last); a flat record
    that only the last task finds shifts nothing but removes a row: the metadata is written again
    for the rows as inspected, and the store equals in-process, metadata arrays included."""
    import zarr_store.convert as conv

    arch = write_archive(tmp_path / "arch", n=15, fs=250, seconds=10.0, bad=())
    write_record(tmp_path / "arch", "zz_flat", np.full((2500, 12), 0.5), 250)
    (tmp_path / "arch" / "RECORDS").write_text("".join(f"{r}\n" for r in [*arch.good, "zz_flat"]))
    one = convert([arch.root], tmp_path / "one.zarr", progress=False, shard_size=4)
    rows_written = []
    real = conv.write_metadata
    monkeypatch.setattr(conv, "write_metadata", lambda io, plan, *a, **k: rows_written.append(len(plan)) or
                        real(io, plan, *a, **k))
    two = convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=4, workers=2)
    assert rows_written == [16, 15]  # as predicted (the flat record too), then as inspected
    arrays = lambda s: {str(f.relative_to(s)): f.read_bytes() for f in sorted(s.rglob("*"))  # noqa: E731
                        if f.is_file() and f.relative_to(s).parts[0] not in ("_convert", "zarr.json")}
    # every array's files, metadata too, byte for byte (written afresh, not shrunk through zarr)
    assert arrays(tmp_path / "one.zarr") == arrays(tmp_path / "two.zarr")
    assert one.rows == two.rows == 15 and two.skipped == one.skipped == {"flat": 1}
    assert_same_arrays(load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr"))
    assert _files(tmp_path / "one.zarr") == _files(tmp_path / "two.zarr")
    assert load(tmp_path / "two.zarr")["record_id"][-1] == arch.good[-1]


_WORKER_KILLED = """
import os, signal, sys
import zarr_store.tasks as tasks
real = tasks.run_checked_task
def dying(args):
    if args[0].shard == 3:  # this worker process dies (as if out of memory) before writing shard 3
        os.kill(os.getpid(), signal.SIGKILL)
    return real(args)
dying.__module__, dying.__qualname__ = "zarr_store.tasks", "run_checked_task"  # pickled by name
import zarr_store.plan as plan
plan.run_checked_task = tasks.run_checked_task = dying
from crema_fast.cli import main
sys.exit(main(["convert", sys.argv[1], "--out", sys.argv[2], "--shard-size", "4", "--workers", "2"]))
"""


def test_a_worker_killed_gives_a_one_line_error_and_a_rerun_finishes(tmp_path):
    """A worker process killed mid-conversion: the command exits non-zero with one line naming the
    process and the way on, no traceback; the same command again gives the in-process store."""
    arch = _archive_with_flats(tmp_path / "arch")
    ref = tmp_path / "ref.zarr"
    convert([arch.root], ref, progress=False, shard_size=4)
    out = tmp_path / "out.zarr"
    res = subprocess.run([sys.executable, "-c", _WORKER_KILLED, str(arch.root), str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert "Traceback" not in res.stderr
    assert last.startswith("crema-fast convert: error: conversion worker process ")
    assert "(killed by signal 9)" in last and "run the same command again to continue" in last
    summary = convert([arch.root], out, progress=False, shard_size=4, workers=2)
    assert summary.converted == 30
    assert_same_arrays(load(out), load(ref))
    assert _files(out) == _files(ref)


def test_spawned_workers_give_the_in_process_store(tmp_path, monkeypatch):
    """Beside other threads (a notebook, a caller's own) the workers are spawned, not forked
    (runner.start_method): they import everything themselves and keep no state of this process;
    the store is still the in-process one, wrong predictions included."""
    import zarr_store.runner as runner

    arch = _archive_with_flats(tmp_path / "arch", n=9)
    convert([arch.root], tmp_path / "one.zarr", progress=False, shard_size=4)
    monkeypatch.setattr(runner, "start_method", lambda: "spawn")
    convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=4, workers=2)
    assert_same_arrays(load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr"))
    assert _files(tmp_path / "one.zarr") == _files(tmp_path / "two.zarr")


_INTERRUPTED_RUN = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job may inherit it ignored
import zarr_store.tasks as tasks
real = tasks.ShardFile.commit
def slow(*a, **k):
    time.sleep(0.15)  # slow shards, so that Ctrl-C lands mid-run
    return real(*a, **k)
tasks.ShardFile.commit = slow
from crema_fast.cli import main
sys.exit(main(["convert", sys.argv[1], "--out", sys.argv[2], "--shard-size", "4", "--workers", "2"]))
"""


def test_ctrl_c_with_workers_prints_one_line_and_a_rerun_finishes(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a conversion with
    two workers: exit 130 with one line and nothing from the workers; the same command again gives
    the in-process store."""
    arch = _archive_with_flats(tmp_path / "arch")
    ref = tmp_path / "ref.zarr"
    convert([arch.root], ref, progress=False, shard_size=4)
    out = tmp_path / "out.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTED_RUN, str(arch.root), str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(out.glob("_convert/*/shard-*.json"))) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("convert:")]
    assert proc.returncode == 130 and lines == ["crema-fast convert: interrupted; what was written is kept"], err
    summary = convert([arch.root], out, progress=False, shard_size=4, workers=2)
    assert summary.converted == 30 and summary.shards_resumed + summary.shards_written == 8
    assert_same_arrays(load(out), load(ref))
    assert _files(out) == _files(ref)
