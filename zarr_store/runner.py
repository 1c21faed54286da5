"""Where conversion work runs: in-process, local processes, or a Dask cluster."""

from __future__ import annotations

import gc
import pickle
import sys
import threading
from concurrent.futures import Future
from contextlib import contextmanager

from zarr_store.errors import BadArgumentError


# Threads whose owners make a forked child safe: zarr's and fsspec's I/O loops (each library resets
# its loop in the child, os.register_at_fork). zarr's starts as soon as a conversion writes zarr.json.
FORK_SAFE_THREADS = frozenset({"zarr_io", "fsspecIO"})


def start_method() -> str:
    """How local worker processes start: "fork" on Linux when this process runs no other Python
    thread than those in FORK_SAFE_THREADS (a CLI call: a worker is ready in ~10 ms, where "spawn"
    re-imports numpy and the codecs in each worker, 0.6 s on our 2-core VMs, a third of a
    5,000-record conversion), else "spawn" (safe beside the threads of a Dask client, a notebook's
    kernel or a caller's own)."""
    others = {t.name for t in threading.enumerate() if t is not threading.main_thread()}
    if sys.platform.startswith("linux") and others <= FORK_SAFE_THREADS:
        return "fork"
    return "spawn"


def _die_with_parent() -> None:
    """Worker initializer (Linux): killed when the converting process dies. A worker orphaned by a
    SIGKILL would otherwise finish its task, and a task of rows that a wrong prediction shifted
    (zarr_store.plan) could then land after the re-run has written that shard."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG


@contextmanager
def frozen_heap():
    """Garbage collection skips the objects that exist on entry (gc.freeze; call gc.freeze() again
    inside to add later ones), until exit. Why: a conversion holds a few objects per record for its
    whole run (names, located records, planned rows), and each of Python's full collections walks
    them all; in a forked worker a collection also writes to every object it inherited, copying the
    parent's pages. Measured on 20,000 PTB-XL records on our 2-core VM (one run each): a conversion
    with workers=2 took 7.2 s of wall clock and 10.0 s of its workers' CPU with collections, 5.4 s
    and 7.5 s without; the parent's prediction of a record takes 26 µs without them.
    A caller's own frozen objects (an application that froze its heap before calling) stay frozen:
    only a heap that had none frozen on entry is unfrozen on exit (gc.unfreeze cannot nest)."""
    outer = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not outer:
            gc.unfreeze()


def _packed_call(fn, x) -> bytes:
    """``fn(x)`` pickled, on a Dask worker. Why: Dask serializes a list or tuple result item by item
    (for each, a frame and its header), and the predictions of a shard of records are 512 tuples:
    py-spy caught the workers' event loops serializing them in 226 samples of a 20,000-record
    conversion, against 557 in the tasks themselves."""
    return pickle.dumps(fn(x), protocol=pickle.HIGHEST_PROTOCOL)


class _Packed:
    """A Dask future of _packed_call: ``result()`` is fn(x)."""

    def __init__(self, future):
        self.future = future

    def done(self) -> bool:
        return self.future.done()

    def result(self):
        return pickle.loads(self.future.result())


class Runner:
    """submit() / wait_first(), map() and as_completed() over local processes (``workers`` of them,
    started as start_method() says), a Dask cluster (``dask="local"`` starts a LocalCluster of
    ``workers`` processes; otherwise a scheduler address), or in-process (workers=1). A context
    manager: pools and clusters it made are closed. ``affine``: local processes each with a pipe of
    their own (procpool.Pool), so that ``submit(..., worker=i)`` reaches the same process each time
    (on a Dask cluster: the same worker, where it is free), with submit() and wait_first() only;
    else one shared queue."""

    def __init__(self, workers: int, dask, affine: bool = False):
        self.workers, self.dask, self.affine = workers, dask, affine
        self.pool = self.client = self.cluster = None
        self.addresses: list[str] = []  # Dask workers, in a fixed order (submit's ``worker``)

    def __enter__(self):
        if self.dask is not None:
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                raise BadArgumentError("dask: dask.distributed is not installed (pip install crema-fast[dask])") from None
            if self.dask == "local":
                import dask

                # Workers forked when this process has no other thread (as for local processes):
                # a cluster of spawned workers takes ~2.3 s to start here, a forked one ~0.8 s.
                # A cluster that lives for one conversion needs no statistical profiler (a thread
                # sampling each worker every 10 ms) and its monitors can look less often: the
                # event loops' tick (20 ms), the system and memory monitors (0.5 s, 0.1 s). With
                # these, 20,000 records: this process 1.19-1.29 s of CPU, against 1.48-1.66 s.
                with dask.config.set({"distributed.worker.multiprocessing-method": start_method(),
                                      "distributed.worker.profile.enabled": False,
                                      "distributed.admin.tick.interval": "1s",
                                      "distributed.admin.system-monitor.interval": "5s",
                                      "distributed.worker.memory.monitor-interval": "1s"}):
                    self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None)
                # Results fetched from the workers, not through the scheduler (here, in this process).
                self.client = Client(self.cluster, direct_to_workers=True)
                # Their heaps (distributed's own objects) frozen from garbage collection, as this
                # process's is (frozen_heap): 20,000 records took 7.9-9.4 s without, 5.9-7.0 with
                # (workers=2: 5.4-6.0 s). Only in a cluster of our own: a shared one is not ours to set.
                self.client.run(gc.freeze)
            else:
                try:
                    self.client = Client(self.dask, timeout=10)
                except (OSError, TimeoutError, ValueError) as exc:
                    raise BadArgumentError(f"dask: cannot reach a scheduler at {self.dask!r} ({exc})") from None
            info = self.client.scheduler_info().get("workers", {})
            self.addresses = sorted(info)
            if self.dask != "local":
                self.workers = max(1, sum(w.get("nthreads", 1) for w in info.values()))
        elif self.workers > 1 and self.affine:
            import multiprocessing

            from zarr_store.procpool import Pool

            self.pool = Pool(self.workers, multiprocessing.get_context(start_method()), initializer=_die_with_parent)
        elif self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(start_method()),
                                            initializer=_die_with_parent)
        return self

    def __exit__(self, *exc):
        if self.pool is not None and self.affine:
            self.pool.close()
        elif self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def parallel(self) -> bool:
        return self.pool is not None or self.client is not None

    def submit(self, fn, x, worker: int | None = None):
        """A future of ``fn(x)`` (in-process: computed now); ``worker``: which process, when affine."""
        if self.client is not None:
            where = {}
            if worker is not None and self.addresses:
                where = {"workers": [self.addresses[worker % len(self.addresses)]], "allow_other_workers": True}
            return _Packed(self.client.submit(_packed_call, fn, x, pure=False, **where))
        if self.pool is not None and self.affine:
            return self.pool.submit(fn, x, worker)
        if self.pool is not None:
            return self.pool.submit(fn, x)
        fut = Future()
        try:
            fut.set_result(fn(x))
        except BaseException as exc:  # raised by result(), as a worker's error is
            fut.set_exception(exc)
        return fut

    def least_loaded(self, prefer: int) -> int:
        """``prefer``, unless another local worker has fewer unfinished tasks (procpool.Pool): on a
        VM whose cores run at different speeds, work follows the faster one. A Dask cluster's
        load is not looked up (a request): ``prefer``."""
        return self.pool.least_loaded(prefer) if self.pool is not None and self.affine else prefer

    def wait_first(self, futures) -> list:
        """The futures of ``futures`` that are done, once at least one is."""
        futures = list(futures)
        if self.client is not None:
            from distributed import wait

            inner = {f.future: f for f in futures}
            return [inner[f] for f in wait(list(inner), return_when="FIRST_COMPLETED").done]
        if self.pool is not None and self.affine:
            return self.pool.wait_first(futures)
        from concurrent.futures import FIRST_COMPLETED, wait

        return list(wait(futures, return_when=FIRST_COMPLETED).done)

    def map(self, fn, items: list):
        """Results in the order of ``items``."""
        if self.client is not None:
            return self.client.gather(self.client.map(fn, items, pure=False))
        if self.pool is not None:
            return list(self.pool.map(fn, items))
        return [fn(x) for x in items]

    def as_completed(self, fn, items: list):
        if self.client is not None:
            from distributed import as_completed

            for fut in as_completed(self.client.map(fn, items, pure=False)):
                yield fut.result()
        elif self.pool is not None:
            from concurrent.futures import as_completed

            for fut in as_completed([self.pool.submit(fn, x) for x in items]):
                yield fut.result()
        else:
            for x in items:
                yield fn(x)
