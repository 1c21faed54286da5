"""The run config: presets, JSON round trip, overrides from files and --set, derived values, errors."""

import json
import math

import pytest

from crema_fast.errors import ConfigError
from crema_fast.model.config import ModelConfig
from crema_fast.train.config import PRESETS, OptimConfig, RunConfig, build_config, parse_set


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_round_trip_through_json(preset):
    cfg = build_config(preset)
    back = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg
    assert isinstance(back.optim.betas, tuple)  # JSON lists come back as the field's tuple


def test_presets_use_the_model_presets():
    assert build_config("base").model == ModelConfig.preset("base")
    assert build_config("demo").model == ModelConfig.preset("tiny")
    assert build_config().train.steps == PRESETS["demo"]["train"]["steps"]  # the default is the demo


def test_set_overrides_are_typed():
    cfg = build_config("tiny", sets=["train.steps=7", "optim.lr=2e-3", "optim.betas=[0.8, 0.9]",
                                     "train.compile=true", "train.attention=ref", "data.highpass=null",
                                     "loss.lam=1"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 2e-3 and cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.compile is True and cfg.train.attention == "ref" and cfg.data.highpass is None
    assert cfg.loss.lam == 1.0 and isinstance(cfg.loss.lam, float)


def test_precedence_preset_then_file_then_overrides_then_set(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('preset = "tiny"\n[train]\nsteps = 11\nbatch_size = 8\n[optim]\nlr = 0.01\n')
    cfg = build_config(file=toml, overrides={"train": {"steps": 12}}, sets=["optim.lr=0.02"])
    assert cfg.train.batch_size == 8 and cfg.train.steps == 12 and cfg.optim.lr == 0.02
    assert cfg.optim.warmup_steps == PRESETS["tiny"]["optim"]["warmup_steps"]  # from the file's preset
    js = tmp_path / "run.json"
    js.write_text(json.dumps({"train": {"steps": 3}}))
    assert build_config("small", file=js).train.steps == 3


def test_model_patch_layout_follows_the_data():
    cfg = build_config("tiny", sets=["data.crop=1500", "mask.patch=50"])
    assert (cfg.model.patch, cfg.model.n_patches) == (50, 30)
    with pytest.raises(ConfigError, match="model.n_patches"):
        build_config("tiny", sets=["data.crop=1500", "model.n_patches=30"])


@pytest.mark.parametrize("item, match", [
    ("train.steps=0", "train.steps"),
    ("train.steps=1.5", "train.steps"),
    ("optim.lr=abc", "optim.lr"),
    ("train.nope=1", "unknown fields"),
    ("nope.steps=1", "section"),
    ("steps=1", "section.field=value"),
    ("train.amp=fp16", "train.amp"),
    ("train.attention=flash", "train.attention"),
])
def test_bad_overrides_name_the_field(item, match):
    with pytest.raises(ConfigError, match=match):
        build_config("tiny", sets=[item])


def test_micro_batch_is_derived_and_must_divide():
    cfg = build_config("tiny", sets=["train.batch_size=32", "optim.grad_accum=2"])
    assert cfg.micro_batch(1) == 16 and cfg.micro_batch(2) == 8
    with pytest.raises(ConfigError, match="multiple of world_size x optim.grad_accum"):
        cfg.micro_batch(3)


def test_warmup_cosine_schedule_values():
    o = OptimConfig(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert o.lr_factor(0, 110) == pytest.approx(0.1)  # linear warmup from lr / warmup
    assert o.lr_factor(9, 110) == pytest.approx(1.0)
    assert o.lr_factor(10, 110) == pytest.approx(1.0)  # start of the cosine
    assert o.lr_factor(60, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert o.lr_factor(110, 110) == pytest.approx(0.1)  # ends at min_lr
    assert o.lr_factor(500, 110) == pytest.approx(0.1)


def test_parse_set_reads_json_values():
    assert parse_set("optim.lr=1e-3") == ("optim", "lr", 1e-3)
    assert parse_set("train.out=runs/x") == ("train", "out", "runs/x")
