"""zarr_store.procpool: tasks reach the worker they are sent to, in order; errors and a dead worker
come back as the future's exception; nothing is left running."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal

import pytest

from zarr_store.procpool import Pool, WorkerDied

_SEEN: list = []  # per worker process: what earlier tasks there left


def _remember(x):
    _SEEN.append(x)
    return os.getpid(), list(_SEEN)


def _fail(x):
    raise ValueError(f"bad item {x}")


def _die(x):
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(params=["fork", "spawn"])
def ctx(request):
    return multiprocessing.get_context(request.param)


def test_tasks_reach_their_worker_in_order(ctx):
    pool = Pool(2, ctx)
    try:
        futs = [(w, pool.submit(_remember, (w, i), worker=w)) for i in range(5) for w in (0, 1, 2, 3)]
        got = {w: [] for w in range(4)}
        for w, f in futs:
            got[w].append(f.result())
        # worker 2 is worker 0 and 3 is 1 (modulo 2): each process saw exactly its tasks, in order
        pids = {w: {pid for pid, _ in got[w]} for w in got}
        assert pids[0] == pids[2] and pids[1] == pids[3] and len(pids[0] | pids[1]) == 2
        _, last0 = got[2][-1]  # the last task sent to that process
        assert last0 == [(w, i) for i in range(5) for w in (0, 2)]
        assert pool.load(0) == pool.load(1) == 0
    finally:
        pool.close()


def test_wait_first_and_least_loaded():
    pool = Pool(2, multiprocessing.get_context("fork"))
    try:
        futs = [pool.submit(_remember, i) for i in range(6)]  # no worker named: the least loaded
        done = set()
        while len(done) < len(futs):
            got = pool.wait_first([f for f in futs if f not in done])
            assert got and all(f.done() for f in got)
            done |= set(got)
        assert len({f.result()[0] for f in futs}) == 2  # both processes worked
        assert sorted(x for f in futs for x in f.result()[1][-1:]) == list(range(6))
    finally:
        pool.close()


def test_error_and_dead_worker_come_back_as_exceptions():
    pool = Pool(2, multiprocessing.get_context("fork"))
    try:
        with pytest.raises(ValueError, match="bad item 3"):
            pool.submit(_fail, 3, worker=0).result()
        assert pool.submit(_remember, "after", worker=0).result()[1][-1] == "after"  # the worker lives on
        dying, queued = pool.submit(_die, None, worker=1), pool.submit(_remember, "never", worker=1)
        for fut in (dying, queued):
            with pytest.raises(WorkerDied, match=r"killed by signal 9\) with 2 task\(s\) unfinished"):
                fut.result()
        with pytest.raises(WorkerDied, match="ended"):  # sent to the dead one later: fails at once
            pool.submit(_remember, "late", worker=1).result()
        assert pool.submit(_remember, "other", worker=0).result()[1][-1] == "other"
    finally:
        pool.close()
    assert all(w.process.exitcode is not None for w in pool._workers)


def test_close_with_unfinished_tasks_kills_the_workers():
    import time

    pool = Pool(1, multiprocessing.get_context("fork"))
    pool.submit(time.sleep, 30, worker=0)
    t0 = time.perf_counter()
    pool.close()
    assert time.perf_counter() - t0 < 10
    assert pool._workers[0].process.exitcode == -signal.SIGKILL


def _cannot_rebuild():
    raise TypeError("missing an argument")  # as an error class whose __init__ takes two


class _Unreadable:
    """Pickles in the worker; reading it back here fails."""

    def __reduce__(self):
        return _cannot_rebuild, ()


def _unreadable(x):
    return _Unreadable()


def test_results_that_cannot_be_read_back_or_sent_fail_their_own_future():
    """A task's outcome that pickles but cannot be unpickled fails that future, not the next one; an
    argument that cannot be pickled raises at submit and leaves nothing pending; a timeout is kept."""
    import time

    pool = Pool(1, multiprocessing.get_context("fork"))
    try:
        bad = pool.submit(_unreadable, 1, worker=0)
        good = pool.submit(_remember, "next", worker=0)
        with pytest.raises(RuntimeError, match="could not be read back"):
            bad.result()
        assert good.result()[1][-1] == "next"
        with pytest.raises((pickle.PicklingError, AttributeError)):
            pool.submit(_remember, lambda: None, worker=0)  # a lambda does not pickle
        assert pool.load(0) == 0
        assert pool.submit(_remember, "after", worker=0).result()[1][-1] == "after"
        slow = pool.submit(time.sleep, 1.0, worker=0)
        with pytest.raises(TimeoutError):
            slow.result(timeout=0.05)
        assert slow.result() is None
    finally:
        pool.close()
