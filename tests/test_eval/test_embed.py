"""Embeddings: the frozen encoder over the project's data path, checkpoints, the Zarr file, errors."""

import numpy as np
import pytest
import torch

from crema_fast.eval.embed import (embed_rows, embed_store, embedding_meta, load_encoder, read_embeddings,
                                   write_embeddings)
from crema_fast.eval.errors import CheckpointMismatchError, EvalError
from tests.test_eval.stores import save_tiny_checkpoint


def test_embeddings_equal_encode_of_the_loader_batch(small_store):
    # The same rows through ECGLoader(train=False) and CremaModel.encode by hand: the same numbers.
    from crema_fast.data.loader import ECGLoader

    enc = load_encoder(None, preset="tiny", random_init=True, seed=1, device="cpu")
    ids, emb = embed_rows(enc, small_store, batch_size=32, progress=False)
    assert emb.shape == (120, 64) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert ids[0] == "records500/00000/00001_hr" and len(set(ids)) == 120
    loader = ECGLoader(small_store, enc.cfg.data, enc.cfg.mask, 50, train=False, drop_last=False)
    batch = next(iter(loader))
    with torch.no_grad():
        want = enc.model.encode(batch.signal, batch.lead_mask).numpy()
    np.testing.assert_allclose(emb[:50], want, rtol=1e-5, atol=1e-6)
    # batching does not change a row's embedding
    _, emb7 = embed_rows(enc, small_store, batch_size=7, progress=False)
    np.testing.assert_allclose(emb7, emb, rtol=1e-5, atol=1e-6)
    assert np.abs(emb[0] - emb[1]).max() > 1e-3  # different ECGs, different embeddings


def test_checkpoint_weights_are_loaded(small_store, tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "run", seed=5)
    _, from_ckpt = embed_store(small_store, ckpt, progress=False, device="cpu")
    _, same_init = embed_store(small_store, None, preset="tiny", random_init=True, seed=5, progress=False,
                               device="cpu")
    _, other_init = embed_store(small_store, None, preset="tiny", random_init=True, seed=6, progress=False,
                                device="cpu")
    np.testing.assert_array_equal(from_ckpt, same_init)  # the checkpoint's weights, exactly
    assert np.abs(from_ckpt - other_init).max() > 1e-3
    # a run folder names its latest checkpoint; --random-init keeps only the architecture
    enc = load_encoder(tmp_path / "run", random_init=True, seed=6, device="cpu")
    assert enc.meta["checkpoint"] == str(ckpt) and enc.meta["random_init"]
    np.testing.assert_array_equal(embed_rows(enc, small_store, progress=False)[1], other_init)


def test_checkpoint_of_another_preset_is_one_line(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "run", seed=0)
    with pytest.raises(CheckpointMismatchError, match=r"not a 'small' model .*model\.dim: 64 vs 384") as info:
        load_encoder(ckpt, preset="small")
    assert "\n" not in str(info.value)
    load_encoder(ckpt, preset="tiny")  # its own preset is fine


def test_encoder_needs_a_checkpoint_or_random_init():
    with pytest.raises(EvalError, match="--random-init"):
        load_encoder(None, preset="tiny")
    with pytest.raises(EvalError, match="neither"):
        load_encoder(None)


def test_zarr_round_trip(small_store, tmp_path):
    ids = np.array(["a/1", "b/2", "c/3"])
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = write_embeddings(tmp_path / "e.zarr", ids, emb, {"checkpoint": None, "store": "s", "x": (1, 2)})
    got = read_embeddings(out)
    assert got.record_ids.tolist() == ids.tolist() and got.rows.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(got.emb, emb)
    assert got.meta["kind"] == "crema-fast embeddings" and got.meta["x"] == [1, 2]
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_embeddings(out, ids, emb)
    write_embeddings(out, ids[:2], emb[:2], overwrite=True)
    assert read_embeddings(out).emb.shape == (2, 4)
    with pytest.raises(EvalError, match="crema-fast embeddings"):
        read_embeddings(small_store)  # a store is not an embeddings file
    enc = load_encoder(None, preset="tiny", random_init=True)
    meta = embedding_meta(enc, small_store)
    assert meta["store_rows"] == 120 and meta["checkpoint"] is None and meta["model"]["dim"] == 64
