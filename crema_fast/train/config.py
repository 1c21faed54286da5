"""The run configuration: one frozen dataclass per concern, composed into ``RunConfig`` with presets.

``RunConfig`` = data (``DataConfig``) + mask (``MaskConfig``) + model (``ModelConfig``) + loss
(``LossConfig``) + optim (``OptimConfig``) + train (``TrainConfig``). It is built in one way::

    cfg = build_config("tiny", file="run.toml", sets=["train.steps=200", "optim.lr=1e-3"])

in this order of precedence (later wins): the preset, the config file's sections, ``overrides`` (the
CLI's ``--steps``/``--attention``/``--data``), the ``--set`` items. Derived values (the micro-batch per rank, the model's patch layout) are computed here and
nowhere else. ``cfg.to_dict()`` / ``RunConfig.from_dict(d)`` round-trip through JSON; the dict is what
checkpoints and the run folder's ``config.json`` hold. Each field's meaning is the string under it;
``config_doc.reference()`` turns them into the config reference (``crema-fast pretrain --print-config``).

Presets (all use the tiny/small/base model presets of ``crema_fast.model.config``):

======  ======  =====  ======  =======  ===================================================
preset  model   batch  steps   lr       meant for
======  ======  =====  ======  =======  ===================================================
demo    tiny    12     1000    2e-3     the shipped 15 demo records, a few minutes on a laptop CPU
tiny    tiny    32     2000    1e-3     CPU runs on a few hundred records; tests
small   small   256    100k    5e-4     one GPU
base    base    512    200k    3e-4     the CREMA scale (ViT-B encoder), several GPUs
======  ======  =====  ======  =======  ===================================================

The demo's length is measured, not guessed: on the 15 demo records the masked MSE sits at the
per-patch-mean level (1.0) for about 400 steps whatever the learning rate (1e-3, 2e-3, 4e-3 tried) and
falls to about 0.72 by step 1000, where the reconstruction plot shows P and T waves; 200-300 steps
would end with flat reconstructions. 1000 steps took 127-170 s of training on 2 cores shared with other
jobs (70-95 ECG/s), and up to 450 s when those jobs loaded both cores.

``batch`` is the global batch per optimizer step (all ranks, all accumulation steps together), so a
preset means the same optimisation on one GPU or eight. The learning rates are our choices (AdamW,
betas (0.9, 0.95), weight decay 0.05 as in MAE), not values read from the CREMA paper.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crema_fast.data.config import DataConfig, MaskConfig
from crema_fast.errors import ConfigError
from crema_fast.model.config import LossConfig, ModelConfig

AMP_MODES = ("auto", "bf16", "fp32")
ATTENTION_IMPLS = ("ref", "sdpa", "triton")
LOSS_IMPLS = ("ref", "triton")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
ORDERS = ("random", "shard")


def _check(cond: bool, where: str, expected: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"{where}: expected {expected}, got {got!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warmup to ``lr`` over ``warmup_steps``, then a cosine decay to ``min_lr`` at the
    last step. Weight decay applies to matrices only (not to biases, norms, embeddings of one row per
    token kind), as in nanoGPT/MAE.

    The loss is computed per forward pass, so with ``grad_accum`` > 1 (and over ranks) two things differ
    from one big batch (crema_fast/model/loss.py): the masked MSE is averaged per rank and per
    micro-batch, then those means are averaged with equal weights (not one mean over every masked patch
    of the step); and NT-Xent's negatives are only the other ECGs of the same micro-batch (gathered over
    ranks), not of the whole step. Accumulation saves memory but makes the contrastive task easier."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of the warmup."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's betas."""
    weight_decay: float = 0.05
    """AdamW's decoupled weight decay, on matrices only."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    warmup_steps: int = 100
    """Steps of the linear warmup from lr / warmup_steps to lr."""
    min_lr: float = 1e-5
    """Learning rate at the last step, where the cosine ends."""
    grad_clip: float = 1.0
    """Max global L2 norm of the gradients (0 = no clipping)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (train.batch_size is split over them)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "optim.lr", "> 0", self.lr)
        _check(0 <= self.min_lr <= self.lr, "optim.min_lr", f"in [0, lr={self.lr}]", self.min_lr)
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas",
               "two numbers in [0, 1)", self.betas)
        _check(self.weight_decay >= 0, "optim.weight_decay", ">= 0", self.weight_decay)
        _check(self.eps > 0, "optim.eps", "> 0", self.eps)
        _check(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "optim.warmup_steps", "an int >= 0",
               self.warmup_steps)
        _check(self.grad_clip >= 0, "optim.grad_clip", ">= 0 (0 = off)", self.grad_clip)
        _check(_is_int(self.grad_accum) and self.grad_accum >= 1, "optim.grad_accum", "an int >= 1",
               self.grad_accum)

    def lr_factor(self, step: int, total_steps: int) -> float:
        """Multiplier of ``lr`` before optimizer step ``step`` (0-based) of ``total_steps``: linear warmup
        from lr/warmup to lr, then cosine to min_lr. This is the LambdaLR function."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        decay = max(1, total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / decay)
        floor = self.min_lr / self.lr
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class TrainConfig:
    """The loop: steps, batches, precision, implementation switches, data, checkpoints and logging."""

    steps: int = 2000
    """Optimizer steps of the whole run (the cosine schedule's length)."""
    batch_size: int = 32
    """Global ECGs per optimizer step, split over ranks and optim.grad_accum (RunConfig.micro_batch)."""
    log_every: int = 10
    """Steps between host syncs: metrics, progress bar, the non-finite check."""
    ckpt_every: int = 500
    """Steps between checkpoints (and one at the end)."""
    keep_last: int = 3
    """Checkpoints kept in the run folder."""
    amp: str = "auto"
    """"auto" (bf16 autocast on CUDA, fp32 on the CPU), "bf16" or "fp32"."""
    compile: bool = False
    """torch.compile the model."""
    compile_mode: str = "default"
    """torch.compile's mode when train.compile: "default", "reduce-overhead" (CUDA graphs: the shapes of a
    step are static, so each step replays one recorded graph; CUDA only) or "max-autotune"."""
    act_ckpt: bool = False
    """Activation checkpointing of the encoder blocks: keep each block's input only and recompute the rest
    in the backward (less memory for larger batches; about a third more encoder FLOPs)."""
    prefetch: bool = True
    """Fetch the next batch while the current step computes, copied to the GPU with non_blocking on a side
    stream (pinned host memory); checkpoints still resume at the exact batch."""
    seed: int = 0
    """Seed of the weights, the masks and the sampling order."""
    workers: int = 0
    """DataLoader worker processes per rank (0 = load in the training process)."""
    attention: str = "sdpa"
    """Attention implementation: "ref" (plain PyTorch), "sdpa" or "triton"."""
    loss: str = "ref"
    """CR-MAE loss implementation: "ref" or "triton"."""
    data: str = ""
    """A store (path or URL) or a folder of WFDB records, converted once ("" = the shipped demo records)."""
    out: str = "runs"
    """Folder under which run folders and converted stores go."""
    order: str = "random"
    """The loader's epoch order: "random" (a permutation of all rows) or "shard" (the shards in a random
    order, rows shuffled within buffers of a few shards: fewer, larger reads on object storage)."""
    plots: bool = True
    """Write loss and reconstruction plots into the run folder."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "ckpt_every", "keep_last"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 1, f"train.{name}", "an int >= 1", v)
        for name in ("seed", "workers"):
            v = getattr(self, name)
            _check(_is_int(v) and v >= 0, f"train.{name}", "an int >= 0", v)
        _check(self.amp in AMP_MODES, "train.amp", f"one of {AMP_MODES}", self.amp)
        _check(self.attention in ATTENTION_IMPLS, "train.attention", f"one of {ATTENTION_IMPLS}", self.attention)
        _check(self.loss in LOSS_IMPLS, "train.loss", f"one of {LOSS_IMPLS}", self.loss)
        _check(self.order in ORDERS, "train.order", f"one of {ORDERS}", self.order)
        _check(isinstance(self.compile, bool), "train.compile", "a bool", self.compile)
        _check(self.compile_mode in COMPILE_MODES, "train.compile_mode", f"one of {COMPILE_MODES}", self.compile_mode)
        for name in ("act_ckpt", "prefetch"):
            _check(isinstance(getattr(self, name), bool), f"train.{name}", "a bool", getattr(self, name))
        _check(isinstance(self.plots, bool), "train.plots", "a bool", self.plots)


SECTIONS: dict[str, type] = {
    "data": DataConfig, "mask": MaskConfig, "model": ModelConfig, "loss": LossConfig,
    "optim": OptimConfig, "train": TrainConfig,
}
# Fields that fix the shapes of the weights: a checkpoint only loads into a model that agrees on all.
ARCH_FIELDS = ("patch", "n_leads", "n_patches", "dim", "depth", "heads", "dec_dim", "dec_depth", "dec_heads",
               "mlp_ratio", "proj_dim", "stem", "stem_channels", "qkv_bias")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, saved in every checkpoint. ``model.patch`` and ``model.n_patches`` follow
    ``mask.patch`` and ``data.crop // mask.patch`` (``build_config`` sets them; here they are checked)."""

    data: DataConfig = field(default_factory=DataConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.model.patch != self.mask.patch:
            raise ConfigError(f"model.patch: expected mask.patch={self.mask.patch}, got {self.model.patch}")
        n = self.mask.n_patches(self.data.crop)  # ConfigError unless crop is a multiple of the patch
        if self.model.n_patches != n:
            raise ConfigError(f"model.n_patches: expected data.crop // mask.patch = {n}, got {self.model.n_patches}")
        # Errors, not warnings: each silently removes a term of the CR-MAE loss, so a run would train
        # something else than asked for hours. MaskConfig alone accepts 0 (evaluation masks nothing).
        if self.mask.ratio == 0:
            raise ConfigError("mask.ratio: expected a fraction in (0, 1) for pretraining (0 masks no patch: "
                              "no reconstruction term), got 0.0")
        if self.train.batch_size < 2 and self.loss.lam > 0:
            raise ConfigError(f"train.batch_size: expected >= 2 (the contrastive term's negatives are the batch's "
                              f"other ECGs; set loss.lam=0 to train without it), got {self.train.batch_size}")

    # Derived values, computed in one place.
    def micro_batch(self, world_size: int = 1) -> int:
        """ECGs per rank per forward pass: batch_size / (world_size * grad_accum), which must divide."""
        parts = world_size * self.optim.grad_accum
        if self.train.batch_size % parts:
            raise ConfigError(
                f"train.batch_size: expected a multiple of world_size x optim.grad_accum = {world_size} x "
                f"{self.optim.grad_accum} = {parts}, got {self.train.batch_size}")
        return self.train.batch_size // parts

    def amp_dtype(self, device_type: str):
        """The autocast dtype for ``device_type`` ("cuda"/"cpu"), or None for plain fp32."""
        import torch

        if self.train.amp == "bf16" or (self.train.amp == "auto" and device_type == "cuda"):
            return torch.bfloat16
        return None

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"RunConfig: unknown sections {sorted(unknown)}; expected {sorted(SECTIONS)}")
        return cls(**{name: _section(kind, name, d.get(name, {})) for name, kind in SECTIONS.items()})

    def replace(self, **sections: Any) -> "RunConfig":
        return dataclasses.replace(self, **sections)


def _coerce(kind: type, name: str, key: str, value: Any) -> Any:
    """Bring a JSON/TOML/CLI value to the type of the field's default (lists -> tuples, ints -> floats)."""
    f = {f.name: f for f in dataclasses.fields(kind)}[key]
    default = f.default if f.default is not dataclasses.MISSING else None
    where = f"{name}.{key}"
    if value is None and "None" in str(f.type):  # an optional field switched off (e.g. data.highpass)
        return None
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        _check(isinstance(value, bool), where, "a bool", value)
    elif isinstance(default, float):
        # nan/inf arrive as TOML literals or as the text of --set; neither is a usable setting
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(number and math.isfinite(value), where, "a finite number", value)
        return float(value)
    elif isinstance(default, int):
        _check(_is_int(value), where, "an int", value)
    elif isinstance(default, tuple):
        _check(isinstance(value, (list, tuple)), where, "a list", value)
        return tuple(value)
    elif isinstance(default, str):
        _check(isinstance(value, str), where, "a string", value)
    return value


def _section(kind: type, name: str, values: dict, base: Any = None) -> Any:
    """``kind`` built from ``base`` (or its defaults) with ``values`` replaced; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a table of fields, got {values!r}")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"{name}: unknown fields {sorted(unknown)}; expected some of {sorted(known)}")
    coerced = {k: _coerce(kind, name, k, v) for k, v in values.items()}
    try:
        return dataclasses.replace(base, **coerced) if base is not None else kind(**coerced)
    except TypeError as exc:  # a config class of another part without that field, bad types
        raise ConfigError(f"{name}: {exc}") from None


PRESETS: dict[str, dict[str, dict]] = {
    "demo": {
        "model": {"_preset": "tiny"},
        "optim": {"lr": 2e-3, "warmup_steps": 20, "min_lr": 1e-4},
        "train": {"steps": 1000, "batch_size": 12, "log_every": 10, "ckpt_every": 250, "keep_last": 2},
    },
    "tiny": {
        "model": {"_preset": "tiny"},
        "optim": {"lr": 1e-3, "warmup_steps": 100, "min_lr": 1e-5},
        "train": {"steps": 2000, "batch_size": 32, "log_every": 10, "ckpt_every": 500},
    },
    "small": {
        "model": {"_preset": "small"},
        "optim": {"lr": 5e-4, "warmup_steps": 2000, "min_lr": 1e-6},
        "train": {"steps": 100_000, "batch_size": 256, "log_every": 50, "ckpt_every": 2000, "workers": 6},
    },
    "base": {
        "model": {"_preset": "base"},
        "optim": {"lr": 3e-4, "warmup_steps": 5000, "min_lr": 1e-6},
        "train": {"steps": 200_000, "batch_size": 512, "log_every": 50, "ckpt_every": 2000, "workers": 8},
    },
}


def parse_set(item: str) -> tuple[str, str, Any]:
    """``"section.field=value"`` -> (section, field, value); the value is read as JSON where it parses
    (numbers, true/false, null, lists), else kept as a string."""
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise ConfigError(f"--set: expected section.field=value (e.g. train.steps=200), got {item!r}")
    key, raw = item.split("=", 1)
    section, name = key.strip().split(".", 1)
    if section not in SECTIONS:
        raise ConfigError(f"--set {key}: expected a section in {sorted(SECTIONS)}, got {section!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, name, value


def read_config_file(path: str | Path) -> dict:
    """A JSON or TOML file of sections (``[train] steps = 200``) and an optional top-level ``preset``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            d = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc}); name a .toml file for TOML") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a table of sections, got {type(d).__name__}")
    return d


def merge_overrides(*layers: dict) -> dict:
    """Section-wise merge of override dicts (later layers win field by field)."""
    out: dict[str, dict] = {}
    for layer in layers:
        for section, values in layer.items():
            if section == "preset":
                continue
            if section not in SECTIONS:
                raise ConfigError(f"config: unknown section {section!r}; expected {sorted(SECTIONS)}")
            if not isinstance(values, dict):
                raise ConfigError(f"config: section {section!r} must be a table, got {values!r}")
            out.setdefault(section, {}).update(values)
    return out


def build_config(preset: str | None = None, *, file: str | Path | None = None, sets: list[str] = (),
                 base: RunConfig | None = None, overrides: dict | None = None) -> RunConfig:
    """The run config: ``base`` (a resumed run's config) or the preset (default "demo", or the config
    file's ``preset``), then the file's sections, then ``overrides`` (a dict of sections), then the
    ``--set`` items. The model's patch layout follows the data/mask fields unless set explicitly."""
    from_file = read_config_file(file) if file is not None else {}
    cli: dict[str, dict] = {}
    for item in sets:
        section, name, value = parse_set(item)
        cli.setdefault(section, {})[name] = value
    layers = merge_overrides(from_file, overrides or {}, cli)
    if base is None:
        preset = preset or from_file.get("preset") or "demo"
        if preset not in PRESETS:
            raise ConfigError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        layers = merge_overrides({k: {f: v for f, v in s.items() if f != "_preset"}
                                  for k, s in PRESETS[preset].items()}, layers)
        model_preset = PRESETS[preset]["model"]["_preset"]
        sections = {"model": None}
    else:
        sections = {name: getattr(base, name) for name in SECTIONS}
    built: dict[str, Any] = {}
    for name, kind in SECTIONS.items():
        if name == "model":
            continue
        built[name] = _section(kind, name, layers.get(name, {}), sections.get(name))
    model_over = dict(layers.get("model", {}))
    # Derived: the model's patch layout follows the data and the mask unless named explicitly.
    model_over.setdefault("patch", built["mask"].patch)
    model_over.setdefault("n_patches", built["mask"].n_patches(built["data"].crop))
    if base is None:
        unknown = set(model_over) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise ConfigError(f"model: unknown fields {sorted(unknown)}")
        coerced = {k: _coerce(ModelConfig, "model", k, v) for k, v in model_over.items()}
        built["model"] = ModelConfig.preset(model_preset, **coerced)
    else:
        built["model"] = _section(ModelConfig, "model", model_over, base.model)
    return RunConfig(**built)


def arch_mismatch(a: ModelConfig, b: ModelConfig) -> list[str]:
    """The architecture fields on which two model configs differ, as "field: a vs b"."""
    return [f"model.{k}: {getattr(a, k)!r} vs {getattr(b, k)!r}" for k in ARCH_FIELDS
            if hasattr(a, k) and getattr(a, k) != getattr(b, k)]
