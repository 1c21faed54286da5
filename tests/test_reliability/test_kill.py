"""A real SIGKILL at seeded moments of ``crema-fast convert`` and ``crema-fast pretrain`` (subprocesses),
then the same command again (convert) or ``--resume`` (pretrain): the store equals an uninterrupted
run's, the losses continue exactly, and no half-written shard or checkpoint is ever read. Moments are
seeded as "after the k-th shard file / checkpoint appears" (k drawn from a fixed seed), so each kill
lands inside the work whatever the machine's speed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import google_crc32c
import pytest

from tests.test_reliability.tally import TALLY, count_traceback
from tests.test_zarr_store.archives import assert_same_arrays, load, write_archive
from zarr_store.convert import convert
from zarr_store.shard_writer import split_shard

RNG = random.Random(14)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "crema_fast.cli", *args]


def _kill_when(cmd: list[str], ready, cwd: Path) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (or when it ends by itself)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while proc.poll() is None and not ready():
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0].decode(errors="replace")
    count_traceback(out)
    TALLY["faults injected"] += 1


def _run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    count_traceback(done.stdout + done.stderr)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _shards_are_whole(store: Path, per_shard: int) -> None:
    """Every shard file present after a kill is whole: its index crc32c and each chunk's crc32c hold."""
    for f in (store / "signals" / "c").rglob("*"):
        if f.is_file() and not f.name.startswith(".tmp-"):
            for c in split_shard(f.read_bytes(), per_shard):
                if c is not None:
                    assert google_crc32c.value(c[:-4]) == int.from_bytes(c[-4:], "little"), f


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    arch = write_archive(tmp_path_factory.mktemp("kill") / "src", n=24, seconds=10.0)
    ref = arch.root.parent / "ref.zarr"
    convert([arch.root], ref, shard_size=2, progress=False)
    TALLY["inputs tried"] += len(arch.good) + len(arch.bad)
    return arch, ref


@pytest.mark.parametrize("k", sorted(RNG.sample(range(1, 12), 3)))
def test_convert_killed_then_rerun(archive, tmp_path, k):
    arch, ref = archive
    store = tmp_path / "s.zarr"
    cmd = _cli("convert", str(arch.root), "--out", str(store), "--shard-size", "2", "--no-progress")

    def ready():
        c = store / "signals" / "c"
        return c.is_dir() and sum(1 for _ in c.iterdir()) >= k

    _kill_when(cmd, ready, tmp_path)
    _shards_are_whole(store, 2)
    _run(cmd, tmp_path)
    got = load(store)
    assert_same_arrays(got, load(ref))
    TALLY["records lost"] += len(set(arch.good) - set(got["record_id"].tolist()))


PRETRAIN = ["--steps", "8", "--no-progress", "--set", "train.batch_size=4", "train.log_every=1",
            "train.ckpt_every=2", "train.keep_last=5", "train.plots=false"]


def _losses(run: Path) -> dict[int, float]:
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def test_pretrain_killed_then_resumed(demo_store, tmp_path):
    ref = tmp_path / "ref"
    _run(_cli("pretrain", "--data", demo_store, "--out", str(ref), *PRETRAIN), tmp_path)
    want = _losses(ref)
    assert sorted(want) == list(range(1, 9))
    from crema_fast.train.checkpoint import read_checkpoint

    # One run killed twice: once checkpoint k (step 2k) is on disk, then again while resuming, at the
    # later of the two seeded k; then resumed to the end (one process fewer than a run per kill).
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    cmd = _cli("pretrain", "--data", demo_store, "--out", str(run), *PRETRAIN)
    for k in sorted(RNG.sample([1, 2, 3], 2)):
        _kill_when(cmd, lambda: (ckpts / f"step_{2 * k:07d}.pt").is_file(), tmp_path)
        assert read_checkpoint(run)["step"] >= 2 * k  # the newest whole checkpoint, never a .tmp
        cmd = _cli("pretrain", "--resume", str(run), "--no-progress")
    _run(cmd, tmp_path)
    assert _losses(run) == want  # every step's loss, bit for bit
