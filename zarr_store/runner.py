"""Where conversion work runs: in-process, local processes, or a Dask cluster."""

from __future__ import annotations

from zarr_store.errors import BadArgumentError


class Runner:
    """map() and as_completed() over local processes (spawned: safe beside zarr's threads), a Dask
    cluster (``dask="local"`` starts a LocalCluster of ``workers`` processes; otherwise a scheduler
    address), or in-process (workers=1). A context manager: pools and clusters it made are closed."""

    def __init__(self, workers: int, dask):
        self.workers, self.dask = workers, dask
        self.pool = self.client = self.cluster = None

    def __enter__(self):
        if self.dask is not None:
            try:
                from distributed import Client, LocalCluster
            except ImportError:
                raise BadArgumentError("dask: dask.distributed is not installed (pip install crema-fast[dask])") from None
            if self.dask == "local":
                self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)
            else:
                try:
                    self.client = Client(self.dask, timeout=10)
                except (OSError, TimeoutError, ValueError) as exc:
                    raise BadArgumentError(f"dask: cannot reach a scheduler at {self.dask!r} ({exc})") from None
        elif self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

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
