"""Local worker processes, each fed through its own pipe, so that a task can be sent to the process
that ran an earlier one and use what that left behind (zarr_store.plan: the headers its predictions
parsed, records.keep_header). concurrent.futures' pool shares one queue among its workers, which
rules that out; one such pool per worker would start two threads each in this process, and forking
the second pool's worker while the first pool's threads run is not safe. This pool starts no thread
in the converting process: results are read when it waits (``wait_first``, a future's ``result``).
"""

from __future__ import annotations

import pickle
import queue
import signal
import threading
import time
import traceback
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_readable

from zarr_store.errors import StoreError

_STOP = b""  # a message of no bytes: the worker exits


class WorkerDied(StoreError, RuntimeError):
    """A worker process ended while tasks sent to it were unfinished (killed, out of memory)."""


def _serve(conn, initializer) -> None:
    """A worker's loop: run each task as it arrives, send back ``(True, result)`` or ``(False, error)``.
    A thread takes messages off the pipe as they come, so that this process never leaves the
    converting one blocked on a full pipe while it runs a task (and both stuck: each sending)."""
    # Ctrl-C reaches every process of the terminal's group: the converting process stops the
    # workers (close), and a worker's own KeyboardInterrupt only printed half a traceback as it died.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer()
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def read() -> None:
        try:
            while True:
                msg = conn.recv_bytes()
                inbox.put(msg)
                if msg == _STOP:
                    return
        except (EOFError, OSError):  # the converting process has gone
            inbox.put(_STOP)

    threading.Thread(target=read, name="crema-inbox", daemon=True).start()
    while (msg := inbox.get()) != _STOP:
        try:
            fn, x = pickle.loads(msg)
            out = (True, fn(x))
        except BaseException as exc:  # raised by the future's result(), as in concurrent.futures
            out = (False, exc)
        try:
            data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # an error (or result) that cannot be pickled: its text instead
            text = "".join(traceback.format_exception(out[1])) if not out[0] else repr(out[1])
            data = pickle.dumps((False, RuntimeError(f"a conversion task's outcome cannot be sent back: {text}")))
        conn.send_bytes(data)


class _PoolFuture(Future):
    """Nothing else reads the pipes: ``result()`` reads them until this one's outcome is in, and
    Pool.wait_first does for a set; concurrent.futures.wait, as_completed, ``exception()`` and
    done-callbacks alone make no progress."""

    def __init__(self, pool: Pool):
        super().__init__()
        self._pool = pool

    def result(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"no result within {timeout} s")
            self._pool.pump(left)
        return super().result(0)


@dataclass
class _Worker:
    process: object
    conn: object
    pending: deque = field(default_factory=deque)  # futures in the order the tasks were sent
    dead: str = ""


class Pool:
    """``n`` worker processes made by ``ctx`` (a multiprocessing context), each running
    ``initializer`` first. ``submit(fn, x, worker)`` runs ``fn(x)`` in worker ``worker % n`` (the
    least loaded when None); tasks sent to one worker run in the order sent."""

    def __init__(self, n: int, ctx, initializer=None):
        self._workers: list[_Worker] = []
        for i in range(n):
            here, there = ctx.Pipe(duplex=True)
            p = ctx.Process(target=_serve, args=(there, initializer), name=f"crema-convert-{i}", daemon=True)
            p.start()
            there.close()
            self._workers.append(_Worker(p, here))

    def __len__(self) -> int:
        return len(self._workers)

    def load(self, worker: int) -> int:
        """Tasks sent to ``worker`` and not finished."""
        return len(self._workers[worker % len(self._workers)].pending)

    def least_loaded(self, prefer: int = 0) -> int:
        """``prefer`` (modulo the count), unless a live worker has fewer unfinished tasks: that one."""
        loads = [(bool(w.dead), len(w.pending)) for w in self._workers]
        prefer %= len(loads)
        least = min(loads)
        return prefer if loads[prefer] == least else loads.index(least)

    def submit(self, fn, x, worker: int | None = None) -> Future:
        w = self._workers[(self.least_loaded() if worker is None else worker) % len(self._workers)]
        fut = _PoolFuture(self)
        if w.dead:
            fut.set_exception(WorkerDied(w.dead))
            return fut
        data = pickle.dumps((fn, x), protocol=pickle.HIGHEST_PROTOCOL)  # may raise: nothing sent yet
        w.pending.append(fut)
        try:
            w.conn.send_bytes(data)
        except OSError:
            self._died(w)
        return fut

    def pump(self, timeout: float | None = None) -> None:
        """Take in the results that have arrived, waiting up to ``timeout`` s (None: until one has)."""
        busy = {w.conn: w for w in self._workers if w.pending}
        if not busy:
            return
        for conn in wait_readable(list(busy), timeout):
            w = busy[conn]
            try:
                data = conn.recv_bytes()
            except (EOFError, OSError):
                self._died(w)
                continue
            fut = w.pending.popleft()
            try:
                ok, value = pickle.loads(data)
            except Exception as exc:  # pickled there, not readable here (an error class's own arguments)
                ok, value = False, RuntimeError(f"a worker's result could not be read back: {exc!r}")
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def wait_first(self, futures) -> list:
        """The futures of ``futures`` that are done, once at least one is."""
        futures = list(futures)
        while True:
            done = [f for f in futures if f.done()]
            if done or not futures:
                return done
            self.pump()

    def _died(self, w: _Worker) -> None:
        w.process.join(1.0)
        code = w.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        w.dead = (f"conversion worker process {w.process.pid} ended ({how}) with {len(w.pending)} task(s) unfinished; "
                  "what was finished is kept: run the same command again to continue")
        while w.pending:
            w.pending.popleft().set_exception(WorkerDied(w.dead))

    def close(self) -> None:
        """Stop the workers: at once when tasks are unfinished (an error or interrupt on the way out;
        a shard they were writing is a temporary file, removed by the next run), else once they
        have read the stop message."""
        for w in self._workers:
            if w.pending:
                w.process.kill()
            else:
                try:
                    w.conn.send_bytes(_STOP)
                except OSError:
                    pass
        for w in self._workers:
            w.process.join(5.0)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
            w.conn.close()
