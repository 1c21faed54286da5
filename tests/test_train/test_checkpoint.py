"""Checkpoints: round trip of every part, atomic writes, keep_last, the architecture-mismatch error."""

import hashlib
import random

import numpy as np
import pytest
import torch

from crema_fast.errors import CremaError
from crema_fast.train.checkpoint import (digest_path, list_checkpoints, load_model_state, read_checkpoint, rng_state,
                                         save_checkpoint, set_rng_state)
from crema_fast.train.config import build_config
from crema_fast.train.engine import build_model, param_groups


def _state(cfg, model, opt, step):
    return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": {},
            "config": cfg.to_dict(), "rng": [rng_state()], "loader": [{"epoch": 3, "position": 5}]}


def test_round_trip_restores_model_optimizer_rng(tmp_path):
    cfg = build_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)
    for p in model.parameters():  # one step so the optimizer has moments to save
        p.grad = torch.randn_like(p)
    opt.step()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    path = save_checkpoint(tmp_path, _state(cfg, model, opt, 7))
    expected = (random.random(), np.random.rand(), torch.rand(3))

    torch.manual_seed(1)
    fresh = build_model(cfg)
    assert not torch.equal(fresh.sit.lead_embed, model.sit.lead_embed)
    ckpt = read_checkpoint(tmp_path)  # a run folder: its latest checkpoint
    assert ckpt["path"] == str(path) and ckpt["step"] == 7 and ckpt["loader"] == [{"epoch": 3, "position": 5}]
    load_model_state(fresh, ckpt, cfg)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    opt2 = torch.optim.AdamW(param_groups(fresh, 0.05), lr=1e-3)
    opt2.load_state_dict(ckpt["optimizer"])
    for s1, s2 in zip(opt.state.values(), opt2.state.values()):
        assert torch.equal(s1["exp_avg"], s2["exp_avg"]) and torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"])
    set_rng_state(ckpt["rng"][0])
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(3), expected[2])
    assert "torch" in ckpt["versions"] and ckpt["format"] == 1


def test_keep_last_and_no_temporary_files(tmp_path):
    cfg = build_config("tiny")
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, _state(cfg, model, opt, step), keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_0000030.pt", "step_0000040.pt"]
    # no .tmp left behind; each checkpoint with its sha256
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted(names + [n + ".sha256" for n in names])


def test_architecture_mismatch_names_the_fields(tmp_path):
    cfg = build_config("tiny")
    model = build_model(cfg)
    save_checkpoint(tmp_path, _state(cfg, model, torch.optim.AdamW(model.parameters()), 1))
    other = build_config("tiny", sets=["model.dim=128", "model.depth=3"])
    with pytest.raises(CremaError, match=r"model\.dim: 64 vs 128.*model\.depth: 2 vs 3"):
        load_model_state(build_model(other), read_checkpoint(tmp_path), other)
    # Without the config check, the tensors' shapes still catch it, by name.
    with pytest.raises(CremaError, match=r"sit\.lead_embed: shape \(12, 64\) vs \(12, 128\)"):
        load_model_state(build_model(other), read_checkpoint(tmp_path))


def test_unreadable_and_missing_checkpoints(tmp_path):
    with pytest.raises(CremaError, match="no checkpoint"):
        read_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    bad = tmp_path / "checkpoints" / "step_0000001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CremaError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    cfg = build_config("tiny")
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(tmp_path, _state(cfg, model, opt, 1))
    latest = save_checkpoint(tmp_path, _state(cfg, model, opt, 2))
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])  # a copy cut short
    ckpt = read_checkpoint(tmp_path)
    assert ckpt["step"] == 1 and ckpt["path"] == str(tmp_path / "checkpoints" / "step_0000001.pt")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"checkpoint {latest} is corrupt" in err  # its sha256 says so first
    assert "using the previous checkpoint " + ckpt["path"] + " (step 1)" in err
    with pytest.raises(CremaError, match="is corrupt"):  # a file named explicitly: no fallback
        read_checkpoint(latest)
    digest_path(latest).unlink()  # a checkpoint without its digest (an older one): read as it is
    with pytest.raises(CremaError, match="cannot read checkpoint"):
        read_checkpoint(latest)


def test_byte_flipped_checkpoint_is_refused_and_skipped(tmp_path, capsys):
    """A flipped byte inside a tensor still unpickles (torch.load checks no CRC): the sha256 beside the
    file catches it, naming the file; a run folder resumes from the newest checkpoint that verifies."""
    cfg = build_config("tiny")
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters())
    first = save_checkpoint(tmp_path, _state(cfg, model, opt, 1))
    latest = save_checkpoint(tmp_path, _state(cfg, model, opt, 2))
    assert digest_path(latest).read_text().strip() == hashlib.sha256(latest.read_bytes()).hexdigest()
    raw = bytearray(latest.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    latest.write_bytes(bytes(raw))
    with pytest.raises(CremaError) as err:
        read_checkpoint(latest)
    assert str(err.value).startswith(f"checkpoint {latest} is corrupt: its sha256")
    ckpt = read_checkpoint(tmp_path)
    assert ckpt["step"] == 1 and ckpt["path"] == str(first)
    msg = capsys.readouterr().err
    assert f"skipped 1 newer checkpoint(s) (checkpoint {latest} is corrupt" in msg and str(first) in msg
    for step in (3, 4, 5):  # pruning removes the digests with their checkpoints
        save_checkpoint(tmp_path, _state(cfg, model, opt, step), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step_0000004.pt", "step_0000004.pt.sha256", "step_0000005.pt", "step_0000005.pt.sha256"]
