"""zarr_store.tasks: shard tasks (progress, resume after SIGKILL, determinism in-process and in worker
processes, few shard files open, appending into a corrupt shard)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.test_zarr_store.archives import assert_same_arrays, load, write_archive
from zarr_store.convert import convert


class _CountingBar:
    """Stands in for tqdm: records what the conversion reports."""
    seen: list = []

    def __init__(self, total=None, **_):
        self.total, self.n = total, 0
        _CountingBar.seen.append(self)

    def update(self, k=1):
        assert k >= 0
        self.n += k

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_progress_counts_every_record_once(tmp_path, monkeypatch):
    """In-process, the bar reaches its total: records counted as their group is encoded, bad ones at
    once, and those of shards an earlier (interrupted) run wrote when their marker is checked."""
    import tqdm.auto

    import zarr_store.tasks as tasks

    monkeypatch.setattr(tqdm.auto, "tqdm", _CountingBar)
    arch = write_archive(tmp_path / "arch", n=14, fs=360, seconds=12.0, bad=("flat", "truncated"))
    real, calls = tasks.ShardStream.finish, []

    def finish_then_fail(self, task):
        calls.append(task.shard)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted after the first shard is written
        return real(self, task)

    monkeypatch.setattr(tasks.ShardStream, "finish", finish_then_fail)
    with pytest.raises(KeyboardInterrupt):
        convert([arch.root], tmp_path / "s.zarr", shard_size=3)
    monkeypatch.setattr(tasks.ShardStream, "finish", real)
    summary = convert([arch.root], tmp_path / "s.zarr", shard_size=3)
    assert summary.shards_resumed == 1 and summary.rows == 28
    bar = _CountingBar.seen[-1]
    assert bar.total == 16 and bar.n == 16


REPO = Path(__file__).resolve().parents[2]


_KILLED_RUN = """
import sys, time
import zarr_store.tasks as tasks
real = tasks.ShardFile.commit
def slow(*a, **k):
    time.sleep(0.15)  # slow shards, so that the kill lands mid-run
    return real(*a, **k)
tasks.ShardFile.commit = slow
from zarr_store.convert import convert
convert([sys.argv[1]], sys.argv[2], progress=False, shard_size=8)
"""


@pytest.mark.parametrize("trigger", ["_convert/*/shard-*.json", "_convert/pending.json"])
def test_resume_after_sigkill_equals_uninterrupted(tmp_path, trigger):
    """Killed once a shard is done (or as soon as the run has begun), then re-run: same store."""
    arch = write_archive(tmp_path / "arch", n=40, fs=250, seconds=10.0, bad=("flat",))
    ref = tmp_path / "ref.zarr"
    convert([arch.root], ref, progress=False, shard_size=8)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_RUN, str(arch.root), str(out)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(trigger)):
            assert proc.poll() is None, "the conversion ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(0.07)  # somewhere inside a later shard
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (out / "_convert" / "pending.json").exists()  # really killed before the end
    summary = convert([arch.root], out, progress=False, shard_size=8)
    assert not list(out.rglob(".tmp-*"))  # the killed writers' temporary files are gone
    assert summary.signal_bytes == convert([arch.root], ref, progress=False, shard_size=8).signal_bytes
    assert summary.shards_written >= 1
    if trigger.endswith("shard-*.json"):
        assert summary.shards_resumed >= 1
    assert summary.converted == 40 and summary.skipped == {"flat": 1}
    assert_same_arrays(load(out), load(ref))
    for shard in range(5):
        assert (out / f"signals/c/{shard}/0/0").read_bytes() == (ref / f"signals/c/{shard}/0/0").read_bytes()
    assert not (out / "_convert" / "pending.json").exists()
    again = convert([arch.root], out, progress=False, shard_size=8)  # finished: nothing to do
    assert again.converted == 0 and again.rows_total == 40 and "already converted" in again.note


@pytest.mark.parametrize("shard_size", [4, 3])  # 3: records of two rows straddle shards
def test_deterministic_workers_and_codecs(tmp_path, shard_size):
    """In-process (tasks.ShardStream) and worker processes (run_shard_task) write the same bytes."""
    arch = write_archive(tmp_path / "arch", n=12, fs=360, seconds=12.0, bad=("truncated",))
    one = convert([arch.root], tmp_path / "one.zarr", progress=False, shard_size=shard_size)
    two = convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=shard_size, workers=2)
    assert one.rows == two.rows == 24
    assert_same_arrays(load(tmp_path / "one.zarr"), load(tmp_path / "two.zarr"))
    for shard in range(24 // shard_size):
        key = f"signals/c/{shard}/0/0"
        assert (tmp_path / "one.zarr" / key).read_bytes() == (tmp_path / "two.zarr" / key).read_bytes()
    if shard_size == 3:
        return
    base = load(tmp_path / "one.zarr")
    for codec in ("lz4", "delta"):
        s = convert([arch.root], tmp_path / f"{codec}.zarr", progress=False, shard_size=4, codec=codec)
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"{codec}.zarr" / "signals"))[:],
                                      base["signals"])
        assert s.compression_ratio > 1


def test_long_records_keep_few_shard_files_open(tmp_path, monkeypatch):
    """A record spanning many shards: each shard file is finished at its last row, so the in-process
    converter holds at most two open (a 24 h Holter with small shards would otherwise open hundreds)."""
    import zarr_store.shard_writer as sw

    open_now, most = set(), [0]
    real_init, real_commit, real_abort = sw.ShardFile.__init__, sw.ShardFile.commit, sw.ShardFile.abort

    def init(self, *a, **k):
        real_init(self, *a, **k)
        open_now.add(id(self))
        most[0] = max(most[0], len(open_now))

    def done(real):
        def f(self):
            open_now.discard(id(self))
            return real(self)
        return f

    monkeypatch.setattr(sw.ShardFile, "__init__", init)
    monkeypatch.setattr(sw.ShardFile, "commit", done(real_commit))
    monkeypatch.setattr(sw.ShardFile, "abort", done(real_abort))
    arch = write_archive(tmp_path / "arch", n=3, fs=500, seconds=61.0, bad=())
    summary = convert([arch.root], tmp_path / "s.zarr", progress=False, shard_size=2)
    assert summary.rows == 21 and not open_now and most[0] <= 2
    two = convert([arch.root], tmp_path / "two.zarr", progress=False, shard_size=2, workers=2)
    assert two.rows == 21
    for shard in range(11):
        key = f"signals/c/{shard}/0/0"
        assert (tmp_path / "s.zarr" / key).read_bytes() == (tmp_path / "two.zarr" / key).read_bytes()


def test_append_onto_a_corrupt_shard_names_it_and_leaves_nothing(tmp_path, capsys):
    a = write_archive(tmp_path / "a", n=5, bad=())
    b = write_archive(tmp_path / "b", n=3, seed=50, bad=())
    store = tmp_path / "s.zarr"
    convert([a.root], store, progress=False, shard_size=4)
    shard = store / "signals/c/1/0/0"  # holds row 4; the append continues in it
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the index: its checksum no longer matches
    shard.write_bytes(bytes(data))
    from crema_fast.cli import main

    assert main(["convert", str(b.root), "--out", str(store), "--shard-size", "4", "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert "signals/c/1/0/0 (rows 4-4 of earlier conversions)" in err and "checksum" in err
    assert "Traceback" not in err and not list(store.rglob(".tmp-*"))
    assert shard.read_bytes() == bytes(data)  # left as it was
