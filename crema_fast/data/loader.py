"""ECGLoader: store -> preprocessed, doubly masked batches, deterministic and resumable.

A batch is the unit of work everywhere: a map-style dataset returns batch ``i`` of epoch ``e`` (one
``StoreReader.read`` of its rows, then the Numba pipeline and the masks on the whole batch), and torch's
DataLoader runs it with ``batch_size=None`` over the (e, i) still due this epoch, in 0, 1 or more worker
processes. Everything random about batch i (its rows, crops, masks) is a function of
(seed, epoch, rank, i) alone, so the batches are identical whatever the number of workers and a resumed
run continues with exactly the batches the interrupted one would have produced.

Workers are persistent (started once per loader, not per epoch): the sampler, which runs in the main
process, hands each worker the epoch with the batch number, so a worker never depends on state set after
it started. They write each batch into a slot of a ring of shared-memory buffers allocated once (fresh
shared memory per batch cost ~60 µs per ECG in page faults and file handles); the slot travels with the
batch number, and the main process copies the batch out of its slot (into page-locked memory when
pinning) before the slot is handed out again, so the batches it yields are ordinary tensors that stay
valid however long they are kept. ``len(ring)`` = batches in flight + 2 (see ``_Ring``).

Epoch order (per epoch, from (seed, epoch)): "random" = a permutation of all rows, rank r takes every
world_size-th row; "shard" = the store's shards in a random order, rows shuffled within buffers of
``buffer_shards`` shards (reads stay within a few shards: for object stores), rank r takes the r-th
contiguous part. Evaluation (train=False) reads the rows in store order with centre crops. drop_last=True
gives every rank the same number of full batches (the few rows left over change every epoch);
drop_last=False covers every row exactly once per epoch (ranks may then differ by one batch).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from crema_fast.data.batch import Batch
from crema_fast.data.config import DataConfig, MaskConfig
from crema_fast.data.masking import make_views
from crema_fast.data.preprocess import crop_starts, model_lengths, preprocess
from crema_fast.errors import ConfigError

_ORDERS = ("random", "shard")


def epoch_order(n: int, seed: int, epoch: int, order: str, shard_rows: int, buffer_shards: int,
                train: bool) -> np.ndarray:
    """All rows of an epoch in reading order, int64 (n,)."""
    if not train:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    if order == "random":
        return rng.permutation(n).astype(np.int64)
    n_shards = -(-n // shard_rows)
    shards = rng.permutation(n_shards)
    parts = []
    for k in range(0, n_shards, buffer_shards):
        rows = np.concatenate([np.arange(s * shard_rows, min(n, (s + 1) * shard_rows)) for s in
                               shards[k:k + buffer_shards]])
        parts.append(rng.permutation(rows))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def rank_rows(rows: np.ndarray, rank: int, world_size: int, order: str, drop_last: bool) -> np.ndarray:
    """This rank's disjoint share of an epoch's rows."""
    n = len(rows)
    if drop_last:
        rows = rows[:n - n % world_size]
    if order == "shard":
        return np.array_split(rows, world_size)[rank]
    return rows[rank::world_size]


class _EpochBatches(Dataset):
    """Map-style dataset over the batch numbers of one rank's epoch (``epoch`` set by the loader)."""

    def __init__(self, reader, data: DataConfig, mask: MaskConfig, batch_size: int, seed: int, rank: int,
                 world_size: int, train: bool, order: str, drop_last: bool, shard_rows: int, buffer_shards: int,
                 parallel: bool):
        self.reader, self.data, self.mask = reader, data, mask
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.train, self.order, self.drop_last = train, order, drop_last
        self.shard_rows, self.buffer_shards, self.parallel = shard_rows, buffer_shards, parallel
        self.n_patches = mask.n_patches(data.crop)
        mask.n_keep(self.n_patches)
        self.epoch = 0
        self.ring: _Ring | None = None  # set by the loader before its workers start
        self._rows_epoch: int | None = None
        self._rows: np.ndarray | None = None

    def rows(self) -> np.ndarray:
        """This rank's rows for the current epoch, in reading order (cached per epoch)."""
        if self._rows_epoch != self.epoch:
            all_rows = epoch_order(len(self.reader), self.seed, self.epoch, self.order, self.shard_rows,
                                   self.buffer_shards, self.train)
            self._rows = rank_rows(all_rows, self.rank, self.world_size, self.order, self.drop_last)
            self._rows_epoch = self.epoch
        return self._rows

    def __len__(self) -> int:
        n = len(self.reader)
        per_rank = n // self.world_size if self.drop_last else -(-(n - self.rank) // self.world_size)
        if self.drop_last:
            return per_rank // self.batch_size
        return -(-per_rank // self.batch_size)

    def __getitem__(self, key) -> Batch | tuple[int, int]:
        """``i`` (batch i of ``self.epoch``) -> a Batch of new tensors; ``(epoch, i, slot)`` (from the
        sampler, in a worker) -> batch i of ``epoch`` written into ring slot ``slot``, returns (slot, B)."""
        epoch, i, slot = (self.epoch, key, None) if isinstance(key, (int, np.integer)) else key
        self.epoch = int(epoch)
        if not 0 <= i < len(self):
            raise IndexError(f"batch {i} out of range [0, {len(self)})")
        rows = self.rows()[i * self.batch_size:(i + 1) * self.batch_size]
        B = len(rows)
        rb = self.reader.read(rows, out=self._signal_buffer(B))
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, i])
        n_model = model_lengths(rb.valid_length, self.reader.rate, self.data.model_rate, rb.signals.shape[-1])
        starts = crop_starts(n_model, self.data.crop, rng, self.train)
        n_leads = rb.signals.shape[1]
        P, K = self.n_patches, self.mask.n_keep(self.n_patches)
        if slot is None:
            b = Batch(signal=_empty((B, n_leads, self.data.crop), torch.float32),
                      ids_keep=_empty((2, B, n_leads, K), torch.int64), mask=_empty((2, B, n_leads, P), torch.float32),
                      ids_restore=_empty((2, B, n_leads, P), torch.int64), lead_mask=_empty((B, n_leads), torch.bool),
                      index=_empty((B,), torch.int64))
        else:
            b = self.ring.slot(slot, B)
        preprocess(rb.signals, rb.lead_mask, rb.valid_length, self.reader.rate, self.data, starts=starts,
                   train=self.train, parallel=self.parallel, out=b.signal.numpy())
        make_views(rng, B, n_leads, P, self.mask, out=(b.ids_keep.numpy(), b.mask.numpy(), b.ids_restore.numpy()))
        b.lead_mask.numpy()[...] = rb.lead_mask
        b.index.numpy()[...] = rows
        return b if slot is None else (int(slot), B)

    def _signal_buffer(self, B: int) -> np.ndarray:
        """The int16 read buffer, reused across batches (fresh memory for every read costs page faults)."""
        shape = (B,) + tuple(self.reader.shape[1:])
        buf = getattr(self, "_buf", None)
        if buf is None or buf.shape[0] < B or buf.shape[1:] != shape[1:]:
            buf = self._buf = np.empty(shape, np.int16)
        return buf[:B]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_buf", None)
        return state


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


class _Ring:
    """Batch buffers in shared memory, one per slot, allocated once in the main process before the workers
    start (they inherit the mapping). A slot is busy from the moment the sampler hands it out with a batch
    number until the main process has copied that batch out. torch's DataLoader hands out the next batch
    number while it returns a batch (before that one is copied), and keeps ``in_flight`` = workers x
    prefetch batches dispatched and not yet returned: at a hand-out at most ``in_flight`` slots are busy, so
    ``in_flight + 1`` slots suffice (the loader allocates ``in_flight + 2``; running out would raise
    IndexError, never overwrite a batch)."""

    _DTYPES = {"signal": torch.float32, "ids_keep": torch.int64, "mask": torch.float32,
               "ids_restore": torch.int64, "lead_mask": torch.bool, "index": torch.int64}

    def __init__(self, slots: int, batch_size: int, n_leads: int, crop: int, P: int, K: int):
        self.dims = (n_leads, crop, P, K)
        # each slot of each field is flat, so that a partial last batch is a contiguous prefix of it
        self.flat = {name: torch.empty((slots, int(np.prod(self.shape(name, batch_size)))), dtype=dtype
                                       ).share_memory_() for name, dtype in self._DTYPES.items()}
        self.free = list(range(slots))

    def shape(self, name: str, B: int) -> tuple[int, ...]:
        """The Batch field's shape for B rows."""
        L, C, P, K = self.dims
        return {"signal": (B, L, C), "ids_keep": (2, B, L, K), "mask": (2, B, L, P), "ids_restore": (2, B, L, P),
                "lead_mask": (B, L), "index": (B,)}[name]

    def __len__(self) -> int:
        return len(self.flat["index"])

    def slot(self, s: int, B: int) -> Batch:
        """Views of slot ``s`` holding a batch of ``B`` rows (C-contiguous)."""
        views = {}
        for name in self._DTYPES:
            shp = self.shape(name, B)
            views[name] = self.flat[name][s, :int(np.prod(shp))].view(shp)
        return Batch(**views)

    def take(self, s: int, B: int, pin: bool) -> Batch:
        """Batch in slot ``s`` copied out (into page-locked memory when ``pin``), the slot freed."""
        view = self.slot(s, B)
        if pin and torch.cuda.is_available():
            out = view.pin()
        else:  # numpy's copy: torch's clone ran on its intra-op threads at 10x the CPU time here
            out = view._map(lambda t: torch.from_numpy(t.numpy().copy()))
        self.free.append(s)
        return out


class _Sampler:
    """(epoch, batch number, ring slot) for every batch still due this epoch; runs in the main process,
    lazily, as torch's DataLoader dispatches work (so a slot is taken only when a batch is dispatched)."""

    def __init__(self, ring: _Ring):
        self.ring, self.epoch, self.start, self.stop = ring, 0, 0, 0

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for i in range(self.start, self.stop):
            yield self.epoch, i, self.ring.free.pop()


def _identity(x):
    return x


def _worker_init(_worker_id: int) -> None:
    # Workers are the parallelism: keep each one on one thread (torch's intra-op pool included).
    torch.set_num_threads(1)


class ECGLoader:
    """Iterate over a store in preprocessed, masked batches (see the module docstring).

    store: a path / fsspec URL or a ``zarr_store.reader.StoreReader``; data / mask: the configs;
    batch_size: ECGs per batch; seed: the run's seed; rank / world_size: this process's DDP position;
    workers: DataLoader worker processes, started on the first pass and kept for the loader's life
    (``close()`` stops them) (0 = in this process, the kernels on Numba's threads);
    train: random crops and shuffled order (False: store order, centre crops); order: "random" | "shard";
    drop_last: only full batches, the same count on every rank; buffer_shards: shards mixed together in
    "shard" order; prefetch: batches each worker prepares ahead; pin: page-locked tensors (default: when
    CUDA is available).

    A complete pass advances the epoch by one; ``set_epoch(e)`` selects an epoch explicitly (and keeps the
    position when ``e`` is the current epoch, so that a restored loader resumes mid-epoch).
    """

    def __init__(self, store, data: DataConfig, mask: MaskConfig, batch_size: int, *, seed: int = 0,
                 rank: int = 0, world_size: int = 1, workers: int = 0, train: bool = True, order: str = "random",
                 drop_last: bool = True, buffer_shards: int = 4, prefetch: int = 2, pin: bool | None = None):
        from zarr_store.reader import StoreReader

        if not isinstance(data, DataConfig):
            raise TypeError(f"data: expected a DataConfig, got {type(data).__name__}")
        if not isinstance(mask, MaskConfig):
            raise TypeError(f"mask: expected a MaskConfig, got {type(mask).__name__}")
        for name, v, lo in (("batch_size", batch_size, 1), ("world_size", world_size, 1), ("workers", workers, 0),
                            ("buffer_shards", buffer_shards, 1), ("prefetch", prefetch, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{name}: expected an int >= {lo}, got {v!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank: expected 0 <= rank < world_size={world_size}, got {rank!r}")
        if order not in _ORDERS:
            raise ConfigError(f"order: expected one of {_ORDERS}, got {order!r}")
        self.reader = store if isinstance(store, StoreReader) else StoreReader(store)
        if len(self.reader) < world_size:
            raise ConfigError(f"store: {len(self.reader)} rows cannot be shared by world_size={world_size} ranks")
        if self.reader.rate <= 0:
            raise ConfigError(f"store: expected a positive 'rate' attribute, got {self.reader.rate!r}")
        layout = getattr(self.reader, "layout", None)
        shard_rows = int(getattr(layout, "shard_rows", 0) or 512)
        self.data, self.mask, self.batch_size = data, mask, int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.workers, self.train, self.order, self.drop_last = int(workers), bool(train), order, bool(drop_last)
        self.prefetch = int(prefetch)
        self.pin = torch.cuda.is_available() if pin is None else bool(pin)
        self.dataset = _EpochBatches(self.reader, data, mask, self.batch_size, self.seed, self.rank,
                                     self.world_size, self.train, order, self.drop_last, shard_rows,
                                     int(buffer_shards), parallel=self.workers == 0)
        self.epoch = 0
        self._position = 0
        self._loader: DataLoader | None = None
        self._warm_up()

    def _warm_up(self) -> None:
        # Compile (or load from Numba's cache) in this process before workers fork, so none compiles again.
        T = self.reader.window or self.reader.shape[-1]
        sig = np.zeros((1, 12, T), np.int16)
        starts = np.zeros(1, np.int64)
        preprocess(sig, np.ones((1, 12), bool), np.full(1, T), self.reader.rate, self.data, starts=starts,
                   train=False, parallel=self.workers == 0)
        make_views(0, 1, 12, self.dataset.n_patches, self.mask)

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its order, crops and masks); the position restarts unless ``epoch`` is current."""
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._position = 0

    def _from_workers(self, start: int, n: int):
        """Batches start..n-1 of the current epoch from the persistent workers (started on first use)."""
        if self._loader is None:
            K = self.mask.n_keep(self.dataset.n_patches)
            n_leads = int(self.reader.shape[1])
            ring = _Ring(self.workers * self.prefetch + 2, self.batch_size, n_leads, self.data.crop,
                         self.dataset.n_patches, K)
            self.dataset.ring = ring
            self._sampler = _Sampler(ring)
            self._loader = DataLoader(self.dataset, batch_size=None, sampler=self._sampler,
                                      num_workers=self.workers, collate_fn=_identity, worker_init_fn=_worker_init,
                                      prefetch_factor=self.prefetch, persistent_workers=True)
        ring = self.dataset.ring
        # Slots of batches an abandoned pass left in flight: torch drains those before dispatching anew.
        ring.free = list(range(len(ring)))
        self._sampler.epoch, self._sampler.start, self._sampler.stop = self.epoch, start, n
        for slot, B in self._loader:
            yield ring.take(slot, B, self.pin)

    def close(self) -> None:
        """Stop the worker processes (they also stop when the loader is garbage-collected)."""
        loader, self._loader = self._loader, None
        it = getattr(loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def state_dict(self) -> dict:
        """The position within the epoch (batches already yielded) and what it depends on."""
        return {"epoch": self.epoch, "position": self._position, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size, "order": self.order,
                "train": self.train, "drop_last": self.drop_last, "rows": len(self.reader)}

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` was taken; the loader must be built over the same store and settings."""
        mine = self.state_dict()
        # The order of an epoch is a function of (seed, rank, world_size): a position saved under other
        # values would silently continue a different sequence of rows, so these must be present and equal.
        for key in ("seed", "rank", "world_size"):
            if key not in state:
                raise ConfigError(f"load_state_dict: {key}: expected {mine[key]!r}, got no {key!r} in the state")
        for key in ("seed", "rank", "world_size", "batch_size", "order", "train", "drop_last", "rows"):
            if key in state and state[key] != mine[key]:
                raise ConfigError(f"load_state_dict: {key} differs: expected {mine[key]!r}, got {state[key]!r}")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise ConfigError(f"load_state_dict: position expected in [0, {len(self)}], got {position}")
        self.epoch = int(state["epoch"])
        self._position = position

    def __iter__(self):
        n = len(self)
        if self._position >= n:  # a restored end-of-epoch position: the next epoch starts
            self.epoch += 1
            self._position = 0
        self.dataset.epoch = self.epoch
        start = self._position
        if self.workers == 0:
            source = (self.dataset[i] for i in range(start, n))
            if self.pin:
                source = (b.pin() for b in source)
        else:
            source = self._from_workers(start, n)
        for batch in source:
            self._position += 1
            yield batch
        if self._position >= n:
            self.epoch += 1
            self._position = 0


__all__ = ["ECGLoader", "epoch_order", "rank_rows"]
