"""ECGLoader on small stores converted from the real records: coverage, ranks, determinism, resume,
workers, fsspec, and the batch contents against the pipeline run directly."""

import numpy as np
import pytest
import torch

from crema_fast.data import Batch, DataConfig, ECGLoader, MaskConfig
from crema_fast.data.preprocess import preprocess
from crema_fast.errors import ConfigError
from zarr_store.reader import StoreReader

DATA, MASK = DataConfig(), MaskConfig()


def _rows(loader) -> np.ndarray:
    return np.concatenate([b.index.numpy() for b in loader])


def _same(a: Batch, b: Batch) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f))
               for f in ("signal", "ids_keep", "mask", "ids_restore", "lead_mask", "index"))


@pytest.mark.parametrize("order", ["random", "shard"])
def test_every_row_once_per_epoch(mixed_store, order):
    n = len(StoreReader(mixed_store))
    loader = ECGLoader(mixed_store, DATA, MASK, 32, seed=3, order=order, drop_last=False)
    assert len(loader) == -(-n // 32)
    e0 = _rows(loader)
    assert loader.epoch == 1  # a complete pass advances the epoch
    e1 = _rows(loader)
    for rows in (e0, e1):
        np.testing.assert_array_equal(np.sort(rows), np.arange(n))
    assert not np.array_equal(e0, e1)
    full = ECGLoader(mixed_store, DATA, MASK, 32, seed=3, order=order, drop_last=True)
    rows = _rows(full)
    assert len(rows) == len(full) * 32 == (n // 32) * 32 and len(np.unique(rows)) == len(rows)


def test_shard_order_stays_within_buffered_shards(mixed_store):
    loader = ECGLoader(mixed_store, DATA, MASK, 64, seed=0, order="shard", buffer_shards=1, drop_last=False)
    shards = [np.unique(b.index.numpy() // 64) for b in loader]  # the fixture writes 64 rows per shard
    assert all(len(s) <= 2 for s in shards)


@pytest.mark.parametrize("order", ["random", "shard"])
def test_ranks_read_disjoint_parts(mixed_store, order):
    n = len(StoreReader(mixed_store))
    for drop_last in (False, True):
        parts = [_rows(ECGLoader(mixed_store, DATA, MASK, 16, seed=9, rank=r, world_size=3, order=order,
                                 drop_last=drop_last)) for r in range(3)]
        allrows = np.concatenate(parts)
        assert len(np.unique(allrows)) == len(allrows)  # disjoint
        if drop_last:
            assert len({len(p) for p in parts}) == 1  # the same number of batches on every rank
        else:
            np.testing.assert_array_equal(np.sort(allrows), np.arange(n))


def test_deterministic_for_seed_epoch_rank(mixed_store):
    a = list(ECGLoader(mixed_store, DATA, MASK, 32, seed=4))
    b = list(ECGLoader(mixed_store, DATA, MASK, 32, seed=4))
    assert all(_same(x, y) for x, y in zip(a, b))
    c = ECGLoader(mixed_store, DATA, MASK, 32, seed=5)
    assert not torch.equal(next(iter(c)).index, a[0].index)
    d = ECGLoader(mixed_store, DATA, MASK, 32, seed=4)
    d.set_epoch(1)
    assert not torch.equal(next(iter(d)).index, a[0].index)


def test_resume_mid_epoch_exactly(mixed_store):
    ref = ECGLoader(mixed_store, DATA, MASK, 32, seed=2)
    ref.set_epoch(3)
    expected = list(ref)
    run = ECGLoader(mixed_store, DATA, MASK, 32, seed=2)
    run.set_epoch(3)
    it = iter(run)
    for _ in range(4):
        next(it)
    state = run.state_dict()
    assert state["epoch"] == 3 and state["position"] == 4
    resumed = ECGLoader(mixed_store, DATA, MASK, 32, seed=2, workers=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # a training loop calling set_epoch(current) keeps the position
    rest = list(resumed)
    assert len(rest) == len(expected) - 4
    assert all(_same(x, y) for x, y in zip(rest, expected[4:]))
    assert resumed.state_dict()["epoch"] == 4 and resumed.state_dict()["position"] == 0
    with pytest.raises(ConfigError, match="batch_size"):
        ECGLoader(mixed_store, DATA, MASK, 16, seed=2).load_state_dict(state)


def test_resume_checks_seed_rank_and_world_size(store250):
    state = ECGLoader(store250, DATA, MASK, 4, seed=2, rank=1, world_size=2).state_dict()
    for kw, field, want, got in ((dict(seed=3, rank=1, world_size=2), "seed", 3, 2),
                                 (dict(seed=2, rank=0, world_size=2), "rank", 0, 1),
                                 (dict(seed=2, rank=1, world_size=3), "world_size", 3, 2)):
        loader = ECGLoader(store250, DATA, MASK, 4, **kw)
        with pytest.raises(ConfigError, match=f"{field} differs: expected {want}, got {got}"):
            loader.load_state_dict(state)
        missing = {k: v for k, v in state.items() if k != field}
        with pytest.raises(ConfigError, match=field):
            ECGLoader(store250, DATA, MASK, 4, seed=2, rank=1, world_size=2).load_state_dict(missing)
    same = ECGLoader(store250, DATA, MASK, 4, seed=2, rank=1, world_size=2)
    same.load_state_dict({**state, "position": 1})
    assert same.state_dict()["position"] == 1


def test_workers_give_identical_batches(mixed_store):
    # two epochs from persistent workers (the sampler carries the epoch), a partial last batch, and every
    # batch kept while later ones are produced (the shared ring's slots must not leak into them)
    batches = {}
    for w in (0, 1, 2):
        loader = ECGLoader(mixed_store, DATA, MASK, 32, seed=8, workers=w, drop_last=False)
        batches[w] = list(loader) + list(loader)
        if w:
            workers = loader._loader._iterator._workers
            assert all(p.is_alive() for p in workers)  # the same processes served both epochs
        loader.close()
    n = len(batches[0])
    assert n == len(batches[1]) == len(batches[2]) > 0 and len(batches[0][n // 2 - 1]) < 32  # partial last
    assert all(_same(x, y) and _same(x, z) for x, y, z in zip(batches[0], batches[1], batches[2]))


def test_workers_resume_after_an_abandoned_pass(mixed_store):
    expected = list(ECGLoader(mixed_store, DATA, MASK, 32, seed=6))
    loader = ECGLoader(mixed_store, DATA, MASK, 32, seed=6, workers=2, prefetch=2)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    it.close()  # abandoned with batches in flight: the workers' leftovers are drained, the slots reused
    rest = list(loader)
    loader.close()
    got = first + rest
    assert len(got) == len(expected) and all(_same(x, y) for x, y in zip(got, expected))


def test_batch_contents(mixed_store):
    reader = StoreReader(mixed_store)
    loader = ECGLoader(reader, DATA, MASK, 64, seed=1, train=False, drop_last=False)
    found_absent = False
    for b in loader:
        rows = b.index.numpy()
        rb = reader.read(rows)
        B = len(rows)
        assert b.signal.shape == (B, 12, 2250) and b.signal.dtype == torch.float32
        assert b.ids_keep.shape == (2, B, 12, 8) and b.mask.shape == b.ids_restore.shape == (2, B, 12, 30)
        assert b.lead_mask.dtype == torch.bool and b.index.dtype == torch.int64
        np.testing.assert_array_equal(b.lead_mask.numpy(), rb.lead_mask)
        want = preprocess(rb.signals, rb.lead_mask, rb.valid_length, reader.rate, DATA, train=False)
        np.testing.assert_array_equal(b.signal.numpy(), want)
        assert torch.isfinite(b.signal).all()
        absent = ~b.lead_mask
        found_absent |= bool(absent.any())
        assert torch.all(b.signal[absent] == 0)
        assert torch.all(b.mask.sum(-1) == 22)
    assert found_absent  # the mixed store has 2-lead (mitdb, qtdb) and 15-signal (ptbdb) records
    np.testing.assert_array_equal(_rows(loader), np.arange(len(reader)))  # evaluation: store order


def test_store_at_model_rate_and_fsspec(store250):
    import fsspec

    local = list(ECGLoader(store250, DATA, MASK, 8, seed=0))
    assert len(local) == 3 and local[0].signal.shape == (8, 12, 2250)
    fs = fsspec.filesystem("memory")
    fs.put(str(store250), "/data_test/s250.zarr", recursive=True)
    try:
        remote = list(ECGLoader("memory://data_test/s250.zarr", DATA, MASK, 8, seed=0))
        assert all(_same(x, y) for x, y in zip(local, remote))
    finally:
        fs.rm("/data_test", recursive=True)


def test_bad_configuration(mixed_store):
    with pytest.raises(ConfigError, match="multiple"):
        ECGLoader(mixed_store, DataConfig(crop=2200), MASK, 8)
    with pytest.raises(ConfigError, match="no visible patch"):
        ECGLoader(mixed_store, DataConfig(crop=150), MaskConfig(ratio=0.75), 8)
    with pytest.raises(ConfigError, match="rank"):
        ECGLoader(mixed_store, DATA, MASK, 8, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="order"):
        ECGLoader(mixed_store, DATA, MASK, 8, order="sorted")
    with pytest.raises(ConfigError, match="batch_size"):
        ECGLoader(mixed_store, DATA, MASK, 0)
