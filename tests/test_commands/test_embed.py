"""``crema-fast embed``: embeddings file from a checkpoint or random init; one-line errors."""

import numpy as np
import pytest

from crema_fast.cli import main
from crema_fast.eval.embed import read_embeddings
from tests.test_eval.stores import convert_ptbxl, save_tiny_checkpoint


@pytest.fixture(scope="module")
def store(shared_data, tmp_path_factory) -> str:
    return convert_ptbxl(shared_data, tmp_path_factory.mktemp("embed") / "ptbxl40.zarr", 40)


def test_embed_checkpoint_and_random_init(store, tmp_path, capsys):
    ckpt = save_tiny_checkpoint(tmp_path / "run", seed=3)
    assert main(["embed", store, "--ckpt", str(tmp_path / "run"), "--out", str(tmp_path / "a.zarr"),
                 "--no-progress", "--batch-size", "16", "--device", "cpu"]) == 0
    assert "embedded 40 rows" in capsys.readouterr().out
    a = read_embeddings(tmp_path / "a.zarr")
    assert a.emb.shape == (40, 64) and a.meta["checkpoint"] == str(ckpt) and a.meta["step"] == 2
    assert a.meta["store_rows"] == 40 and not a.meta["random_init"]
    # the same seed's untrained weights are the checkpoint's weights (save_tiny_checkpoint)
    assert main(["embed", store, "--random-init", "--preset", "tiny", "--seed", "3", "--out",
                 str(tmp_path / "b.zarr"), "--no-progress", "--device", "cpu"]) == 0
    b = read_embeddings(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a.emb, b.emb)
    assert b.meta["random_init"] and b.meta["checkpoint"] is None


def test_embed_errors_are_one_line(store, tmp_path, capsys):
    save_tiny_checkpoint(tmp_path / "run", seed=0)
    out = str(tmp_path / "e.zarr")
    assert main(["embed", store, "--ckpt", str(tmp_path / "run"), "--preset", "small", "--out", out,
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("crema-fast embed: error:") and "model.dim: 64 vs 384" in err and "\n" not in err
    assert main(["embed", store, "--out", out, "--no-progress"]) == 2
    assert "--random-init" in capsys.readouterr().err
    (tmp_path / "exists.zarr").mkdir()
    assert main(["embed", store, "--random-init", "--preset", "tiny", "--out", str(tmp_path / "exists.zarr")]) == 2
    assert "--overwrite" in capsys.readouterr().err
