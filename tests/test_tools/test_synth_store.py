"""tools/synth_store.py: a store of synthetic rows made from the 15 shipped PTB-XL records, checked by
value: layout, determinism, every row against a numpy version of the recipe, metadata copied from the
dominant source, and reading through StoreReader, zarr, ECGLoader and `crema-fast info`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))  # tools is not a package; spawned workers inherit sys.path

import synth_store as S  # noqa: E402

from crema_fast.commands.info import describe  # noqa: E402
from crema_fast.data import DataConfig, ECGLoader, MaskConfig  # noqa: E402
from zarr_store.errors import BadArgumentError  # noqa: E402
from zarr_store.reader import StoreReader  # noqa: E402

N, K, T = 1100, 5, 5000  # rows (three shards of 512, the last partial), source records, window
SOURCES = [str(S.DEMO_RECORDS)]
OFF = S.Recipe(stretch=(1.0, 1.0), gain=0.0, mix=0.0)


def _make(out: Path, n: int = N, **kw) -> dict:
    kw = {"seed": 1, "sources": SOURCES, "max_sources": K, "progress": False, **kw}
    return S.synth_store(n, out, **kw)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "a.zarr"
    return out, _make(out)


@pytest.fixture(scope="module")
def src() -> S.Sources:
    return S.load_sources((str(Path(SOURCES[0]).resolve()),), 500, T, K)


def _signals(store: Path) -> np.ndarray:
    reader = StoreReader(store)
    return reader.read_signals(np.arange(len(reader)))


def _params(seed: int, recipe: S.Recipe, n: int = N) -> S.RowParams:
    """The draws of every row (shard by shard, as the tool makes them)."""
    parts = [S.row_params(recipe, seed, k, min(512, n - k * 512), K, T) for k in range(-(-n // 512))]
    return S.RowParams(*(np.concatenate([getattr(p, f) for p in parts]) for f in S.RowParams.__dataclass_fields__))


def _recipe_in_numpy(x: np.ndarray, lead_ok: np.ndarray, p: S.RowParams, r: int) -> np.ndarray:
    """Row r as the module docstring states the recipe, in float64 (before rounding)."""
    t = np.arange(T)

    def at(src_idx, shift):
        pos = shift + t * p.stretch[r]
        i = np.floor(pos).astype(np.int64)
        f = pos - i
        i %= T
        xs = x[src_idx].astype(np.float64)
        return xs[:, i] + f * (xs[:, (i + 1) % T] - xs[:, i])

    mixed = (1 - p.w[r]) * at(p.a[r], p.sa[r]) + p.w[r] * at(p.b[r], p.sb[r])
    return p.gain[r][:, None] * mixed * lead_ok[p.a[r]][:, None]


def test_layout_shards_dtype(made, src):
    out, summary = made
    assert (summary["rows"], summary["shards"], summary["sources"]) == (N, 3, K)
    assert sorted(p.name for p in (out / "signals" / "c").iterdir()) == ["0", "1", "2"]
    assert all((out / "signals" / "c" / k / "0" / "0").is_file() for k in "012")
    assert not list(out.parent.glob(".tmp-*"))  # built beside OUT, renamed into place
    reader = StoreReader(out)
    assert (len(reader), reader.rate, reader.window) == (N, 500, T)
    rows = reader.read_signals([0, 511, 512, 1099])
    assert rows.dtype == np.int16 and rows.shape == (4, 12, T)
    # zarr's own API reads the same bytes (the converter's format, not a second one)
    z = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(z["signals"][[0, 511, 512, 1099]], rows)
    assert z["signals"].shape == (N, 12, T) and z.attrs["leads"][:3] == ["I", "II", "III"]


def test_every_row_is_the_recipe_applied_to_real_records(made, src):
    """Rows of every shard (every 7th, and the shard edges) against the recipe done in numpy: within 1 µV
    (float32 vs float64 rounding), and each correlates strongly with its dominant source, shifted and
    stretched."""
    out, _ = made
    got = _signals(out).astype(np.float64)
    p = _params(1, S.Recipe())
    x = src.signals
    assert x.shape == (K, 12, T) and np.abs(x).max() > 500  # real ECGs in µV, not zeros
    corr = []
    for r in np.r_[0:N:7, 511, 512, 1023, 1024, N - 1]:
        want = _recipe_in_numpy(x, src.lead_ok, p, r)
        assert np.abs(got[r] - want).max() <= 1.0, r
        alone = _recipe_in_numpy(x, src.lead_ok, S.RowParams(p.a, p.b, 0 * p.w, p.sa, p.sb, p.stretch,
                                                            np.ones_like(p.gain)), r)
        corr.append(np.corrcoef(got[r].ravel(), alone.ravel())[0, 1])
    assert np.min(corr) > 0.5 and np.median(corr) > 0.9  # w <= 0.3: the dominant source shows
    # the draws span the recipe's ranges
    assert p.stretch.min() < 0.92 and p.stretch.max() > 1.08 and 0 < p.w.max() <= 0.3
    assert (p.a != p.b).all() and len(np.unique(p.a)) == K


def test_recipe_off_gives_exact_circular_shifts(tmp_path, src):
    out = tmp_path / "shift.zarr"
    _make(out, 600, recipe=OFF, seed=7)
    got = _signals(out)
    p = _params(7, OFF, 600)
    for r in range(600):
        np.testing.assert_array_equal(got[r], np.roll(src.signals[p.a[r]], -p.sa[r], axis=1))
    assert len(np.unique(p.sa)) > 500  # the shifts differ row to row


def test_deterministic_for_a_seed(made, tmp_path):
    out, _ = made
    a = _signals(out)
    same = tmp_path / "same.zarr"
    _make(same)
    np.testing.assert_array_equal(_signals(same), a)
    for k in "012":  # byte for byte, shard files included
        assert (same / "signals/c" / k / "0/0").read_bytes() == (out / "signals/c" / k / "0/0").read_bytes()
    other = tmp_path / "other.zarr"
    _make(other, seed=2)
    b = _signals(other)
    assert (a != b).any(axis=(1, 2)).all()  # every row differs


def test_workers_write_the_same_store(tmp_path):
    one, two = tmp_path / "w1.zarr", tmp_path / "w2.zarr"
    _make(one, 700, max_sources=3)
    assert _make(two, 700, max_sources=3, workers=2)["workers"] == 2
    np.testing.assert_array_equal(_signals(one), _signals(two))
    np.testing.assert_array_equal(StoreReader(one).column("labels"), StoreReader(two).column("labels"))


def test_metadata_copied_from_the_dominant_source(made, src):
    out, _ = made
    reader = StoreReader(out)
    p = _params(1, S.Recipe())
    recs = [src.records[a] for a in p.a]
    assert reader.column("record_id")[[0, 1, N - 1]].tolist() == ["synth-000001", "synth-000002", "synth-001100"]
    assert set(reader.column("source").tolist()) == {"synth"}
    assert reader.column("labels").tolist() == [r.labels for r in recs]
    assert reader.patient_ids().tolist() == [r.patient_id for r in recs]
    assert reader.column("strat_fold").tolist() == [r.strat_fold for r in recs]
    assert reader.column("sex").tolist() == [r.sex for r in recs]
    np.testing.assert_array_equal(reader.column("age"), np.array([r.age for r in recs], dtype=np.float32))
    assert (reader.column("valid_length") == T).all() and (reader.column("window_index") == 0).all()
    np.testing.assert_array_equal(reader.column("lead_mask"), src.lead_ok[p.a])
    # the PTB-XL table's values, not blanks: labels are scp_codes, patients PTB-XL's integer ids
    assert all(r.labels and r.patient_id.isdigit() and r.strat_fold in range(1, 11) for r in src.records)
    prov = reader.attrs["conversions"][-1]
    assert (prov["tool"], prov["seed"], prov["rows"]) == ("synth_store", 1, [0, N])
    assert prov["recipe"] == {"stretch": [0.9, 1.1], "gain": 0.1, "mix": 0.3}
    assert prov["source_records"] == list(src.names) and len(src.names) == K
    assert json.loads(json.dumps(prov)) == prov


def test_loader_and_info_read_it(made):
    out, _ = made
    loader = ECGLoader(str(out), DataConfig(), MaskConfig(), 32, seed=0)
    batch = next(iter(loader))
    assert batch.signal.shape[:2] == (32, 12) and torch.isfinite(batch.signal).all()
    assert batch.signal.abs().amax() > 0 and len(torch.unique(batch.index)) == 32
    facts = describe(out)
    assert facts["rows"] == N and facts["sources"] == {"synth": N} and facts["conversions"] == 1


def test_bad_arguments_are_named(made, tmp_path, capsys):
    out, _ = made
    for n in ("0", "-3", "ten"):
        assert S.main([n, str(tmp_path / "x.zarr"), "--quiet"]) == 2
        assert "N: expected a positive integer" in capsys.readouterr().err
    assert S.main(["10", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "OUT" in err and "--overwrite" in err
    with pytest.raises(BadArgumentError, match="sources"):
        _make(tmp_path / "y.zarr", sources=[str(tmp_path / "missing")])
    with pytest.raises(BadArgumentError, match="mix"):
        S.Recipe(mix=0.6)
    with pytest.raises(BadArgumentError, match="stretch"):
        S.Recipe(stretch=(1.1, 0.9))
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadArgumentError, match="not a store"):
        _make(tmp_path / "file", 10, overwrite=True)
    assert not (tmp_path / "x.zarr").exists() and not (tmp_path / "y.zarr").exists()


def test_overwrite_replaces_the_store(tmp_path):
    out = tmp_path / "o.zarr"
    _make(out, 20)
    assert len(StoreReader(out)) == 20
    assert S.main(["30", str(out), "--overwrite", "--quiet", "--sources", *SOURCES, "--max-sources", "3"]) == 0
    assert len(StoreReader(out)) == 30 and not list(tmp_path.glob(".tmp-*"))


def test_fsspec_store_matches_a_local_one(tmp_path):
    url = "memory://synth-test/a.zarr"
    assert _make(url, 600, max_sources=3, workers=2)["workers"] == 1  # memory:// lives in this process
    local = tmp_path / "b.zarr"
    _make(local, 600, max_sources=3)
    np.testing.assert_array_equal(StoreReader(url).read_signals(np.arange(600)), _signals(local))
    with pytest.raises(BadArgumentError, match="OUT .*already exists"):
        _make(url, 10)
