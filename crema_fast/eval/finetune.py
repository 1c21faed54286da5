"""Fine-tuning: the whole SiT encoder with a linear head on its pooled embedding, multi-label BCE.

    cfg = FinetuneConfig(epochs=30)
    tuner = Finetuner(cfg, run_dir, reader, train_rows, y_train, val_rows, y_val,
                      encoder=pretrained_encoder(ckpt))   # or scratch_encoder("tiny")
    result = tuner.fit()                                 # early stopping on validation macro AUROC
    scores = predict(tuner.best_model(), reader, test_rows, tuner.data_cfg)   # (N, C) probabilities

The model is ``Classifier``: ``SiT.encode`` (all patches visible, mean over the patch tokens of present
leads, exactly the pretraining pool) -> ``Linear(dim, C)`` -> logits. The decoder of a pretrained SiT is
kept in the state dict (so a fine-tuned checkpoint still loads as a SiT) but frozen and unused.

Data: the store's rows through the project's own pipeline (``crema_fast.data.preprocess``): resample to
the model rate, band-pass, crop, z-score. Training crops are random, seeded by (seed, epoch, batch);
evaluation crops are the fixed centre crop. The epoch's row order is ``loader.epoch_order`` of (seed,
epoch). So a batch is a function of (seed, epoch, batch number) alone, and a resumed run needs only the
epoch it stopped at.

Optimizer: AdamW, weight decay on matrices only (``engine.param_groups``' rule), with layer-wise
learning-rate decay (BEiT / MAE fine-tuning): with depth L, the layer id is l = 0 for the patch
embedding, lead embeddings and separator token, l = i + 1 for block i, l = L + 1 for the final norm and
the head, and parameter group l runs at ``lr * layer_decay ** (L + 1 - l)``. Every group follows the same
schedule factor: linear warmup over ``warmup_epochs``, then cosine to ``min_lr / lr``
(``OptimConfig.lr_factor``). ``layer_decay = 1`` is plain AdamW (the from-scratch baseline uses it: no
layer holds anything worth protecting).

Early stopping: after every epoch the validation macro AUROC (mean over classes of the one-vs-rest
AUROC, ``metrics.macro_auroc``) is computed; the best epoch's weights go to ``<run>/best/``; training stops after
``patience`` epochs without improvement of more than ``min_delta``.

Checkpoints (``crema_fast.train.checkpoint``: atomic, explicit dicts) are written at the end of every
epoch into ``<run>/checkpoints/``: model, optimizer, scheduler, RNG states, epoch, steps, early-stopping
state, history and the configs. A resumed run continues from the next epoch and, on the CPU, gives the
same losses and parameters as an uninterrupted one (tests/test_eval/test_finetune.py).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crema_fast.data.config import DataConfig
from crema_fast.data.loader import epoch_order
from crema_fast.errors import ConfigError, CremaError
from crema_fast.eval.classifier import Classifier, amp_dtype, batch_tensors, check_targets, llrd_groups, predict
from crema_fast.eval.metrics import macro_auroc
from crema_fast.model.config import ModelConfig
from crema_fast.train.checkpoint import read_checkpoint, rng_state, save_checkpoint, set_rng_state
from crema_fast.train.config import OptimConfig

ATTENTION = ("ref", "sdpa", "triton")
AMP = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class FinetuneConfig:
    """epochs: at most this many passes over the training rows; batch_size: ECGs per optimizer step.
    lr: the peak learning rate of the top layer group (norm + head); layer_decay: the factor per layer
    below it (module docstring); weight_decay, betas: AdamW's; warmup_epochs: linear warmup; min_lr:
    the cosine's floor; grad_clip: max global gradient norm (0 = off). patience: epochs without a
    validation macro AUROC gain > min_delta before stopping. eval_batch: ECGs per forward pass when
    scoring. attention: the SiT's implementation; amp: "auto" (bf16 on CUDA, fp32 on the CPU), "bf16",
    "fp32". keep_last: epoch checkpoints kept. seed: initial head (and, from scratch, encoder) weights,
    row order and crops."""

    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-3
    layer_decay: float = 0.75
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: int = 2
    min_lr: float = 1e-6
    grad_clip: float = 1.0
    patience: int = 8
    min_delta: float = 0.0
    eval_batch: int = 128
    attention: str = "sdpa"
    amp: str = "auto"
    keep_last: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience", "eval_batch", "keep_last"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"FinetuneConfig.{name}: expected an int >= 1, got {v!r}")
        if not isinstance(self.warmup_epochs, int) or self.warmup_epochs < 0:
            raise ConfigError(f"FinetuneConfig.warmup_epochs: expected an int >= 0, got {self.warmup_epochs!r}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"FinetuneConfig.layer_decay: expected a number in (0, 1], got {self.layer_decay!r}")
        if self.attention not in ATTENTION:
            raise ConfigError(f"FinetuneConfig.attention: expected one of {ATTENTION}, got {self.attention!r}")
        if self.amp not in AMP:
            raise ConfigError(f"FinetuneConfig.amp: expected one of {AMP}, got {self.amp!r}")
        self.optim(1)  # lr, min_lr, betas, weight_decay, grad_clip checked by OptimConfig

    def optim(self, steps_per_epoch: int) -> OptimConfig:
        """The schedule and AdamW settings as pretraining's OptimConfig (its lr_factor is the schedule)."""
        return OptimConfig(lr=self.lr, betas=tuple(self.betas), weight_decay=self.weight_decay,
                           warmup_steps=self.warmup_epochs * steps_per_epoch, min_lr=self.min_lr,
                           grad_clip=self.grad_clip)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneConfig":
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


@dataclass(frozen=True)
class Encoder:
    """What the classifier starts from: the SiT's shapes, the data pipeline its inputs went through in
    pretraining, its weights (a SiT state dict; None = a fresh, seeded initialisation) and a name for
    reports (the checkpoint's path, or "scratch:<preset>")."""

    model: ModelConfig
    data: DataConfig
    state: dict | None
    source: str


def pretrained_encoder(path: str | Path) -> Encoder:
    """The encoder of a pretraining checkpoint (a file or a run folder: its latest checkpoint), or of a
    fine-tuning one (its SiT; the head is not reused)."""
    ckpt = read_checkpoint(path)
    config = ckpt.get("config") or {}
    if "finetune" in config:
        model, data = ModelConfig(**config["model"]), DataConfig(**config["data"])
    else:
        from crema_fast.train.config import RunConfig

        run = RunConfig.from_dict(config)
        model, data = run.model, run.data
    state = {k[len("sit."):]: v for k, v in ckpt["model"].items() if k.startswith("sit.")}
    if not state:
        raise CremaError(f"{ckpt['path']}: expected a model state with 'sit.*' tensors, found none")
    return Encoder(model, data, state, ckpt["path"])


def encoder_of_run(ckpt: dict) -> Encoder:
    """The encoder a fine-tuning checkpoint's run started from, without weights: a resumed run loads
    its own (fine-tuned) ones from the checkpoint, so the original checkpoint need not exist any more."""
    config = ckpt.get("config") or {}
    if "finetune" not in config:
        raise CremaError(f"{ckpt.get('path', 'checkpoint')}: not a fine-tuning checkpoint (no 'finetune' config)")
    return Encoder(ModelConfig(**config["model"]), DataConfig(**config["data"]), None, config.get("init", "?"))


def scratch_encoder(preset: str = "tiny") -> Encoder:
    """A randomly initialised encoder of a pretraining preset, with that preset's data pipeline."""
    from crema_fast.train.config import build_config

    run = build_config(preset)
    return Encoder(run.model, run.data, None, f"scratch:{preset}")


def build_classifier(encoder: Encoder, n_classes: int, attention: str) -> Classifier:
    """Classifier on ``encoder`` (weights loaded strictly: every SiT tensor's name and shape must agree)."""
    if encoder.data.crop != encoder.model.signal_length:
        raise ConfigError(f"{encoder.source}: data.crop {encoder.data.crop} does not match the model's "
                          f"{encoder.model.n_patches} x {encoder.model.patch} = {encoder.model.signal_length} samples")
    model = Classifier(encoder.model, n_classes, attention)
    if encoder.state is not None:
        missing, unexpected = model.sit.load_state_dict(encoder.state, strict=False)
        if missing or unexpected:
            raise CremaError(f"{encoder.source} does not fit a SiT of its own config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
    return model


class Finetuner:
    """One fine-tuning run: model, AdamW + LLRD, schedule, early stopping and its run folder.

    reader: a ``zarr_store.reader.StoreReader``; train_rows / val_rows: int64 store rows (N,), with
    y_train / y_val float32 (N, C) multi-hot targets; encoder: where the weights start; classes: the C
    class names; meta: extra facts for config.json (store, label set). resume: a checkpoint dict of
    this run (``read_checkpoint(run_dir)``), whose config and rows must be these."""

    def __init__(self, cfg: FinetuneConfig, run_dir, reader, train_rows, y_train, val_rows, y_val, *,
                 encoder: Encoder, classes=(), meta: dict | None = None, resume: dict | None = None,
                 progress: bool = False):
        self.cfg, self.run_dir, self.reader, self.progress = cfg, Path(run_dir), reader, progress
        self.train_rows = np.asarray(train_rows, np.int64)
        self.val_rows = np.asarray(val_rows, np.int64)
        self.y_train = check_targets("y_train", y_train, self.train_rows)
        self.y_val = check_targets("y_val", y_val, self.val_rows, self.y_train.shape[1])
        n_classes = self.y_train.shape[1]
        self.classes = tuple(classes) or tuple(f"class_{k}" for k in range(n_classes))
        for k, name in enumerate(self.classes):
            if self.y_val[:, k].min() == self.y_val[:, k].max():
                lacks = "negative" if self.y_val[0, k] else "positive"
                raise CremaError(f"validation split: class {name!r} has no {lacks} among its {len(self.val_rows)} "
                                 f"rows; its AUROC (early stopping) is undefined")
        self.encoder, self.data_cfg, self.meta = encoder, encoder.data, dict(meta or {})
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.amp = amp_dtype(cfg.amp, self.device)
        torch.manual_seed(cfg.seed)  # the head (and, from scratch, the encoder) start from the seed
        self.model = build_classifier(encoder, n_classes, cfg.attention).to(self.device)
        self.steps_per_epoch = -(-len(self.train_rows) // cfg.batch_size)
        total = cfg.epochs * self.steps_per_epoch
        optim = cfg.optim(self.steps_per_epoch)
        groups = llrd_groups(self.model, cfg.lr, cfg.layer_decay, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas),
                                           fused=self.device.type == "cuda")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: optim.lr_factor(s, total))
        self.epoch, self.step, self.history = 0, 0, []
        self.best, self.best_epoch, self.bad_epochs = -np.inf, -1, 0
        if resume is not None:
            self._restore(resume)

    # -- state ---------------------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"finetune": self.cfg.to_dict(), "model": self.encoder.model.to_dict(),
                "data": dataclasses.asdict(self.data_cfg), "classes": list(self.classes),
                "init": self.encoder.source, **self.meta}

    def state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": [rng_state()], "config": self.config_dict(), "history": list(self.history),
                "early_stopping": {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs},
                "train_rows": self.train_rows, "val_rows": self.val_rows}

    def _restore(self, ckpt: dict) -> None:
        where = ckpt.get("path", "checkpoint")
        saved = ckpt["config"].get("finetune", {})
        if FinetuneConfig.from_dict(saved) != self.cfg:
            raise CremaError(f"{where}: written with another fine-tuning config: {saved} vs {self.cfg.to_dict()}")
        for name in ("train_rows", "val_rows"):
            if not np.array_equal(ckpt[name], getattr(self, name)):
                raise CremaError(f"{where}: {name} differ from this run's (another store, label set or split)")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"][0])
        self.epoch, self.step, self.history = int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"])
        es = ckpt["early_stopping"]
        self.best, self.best_epoch, self.bad_epochs = float(es["best"]), int(es["best_epoch"]), int(es["bad_epochs"])

    # -- the loop ------------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        """One pass over the training rows; the mean BCE (one host sync, at the end)."""
        cfg, model = self.cfg, self.model
        model.train()
        order = epoch_order(len(self.train_rows), cfg.seed, self.epoch, "random", 512, 1, True)
        losses = []
        clip = cfg.grad_clip or float("inf")
        for i in range(self.steps_per_epoch):
            pos = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
            rng = np.random.default_rng([cfg.seed, self.epoch, i])  # this batch's crops, and only this batch's
            x, lm = batch_tensors(self.reader, self.train_rows[pos], self.data_cfg, rng)
            y = torch.from_numpy(self.y_train[pos]).to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                logits = model(x.to(self.device), lm.to(self.device))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            losses.append(loss.detach())
        return float(torch.stack(losses).mean())

    def fit(self, stop_after: int | None = None) -> dict:
        """Train until ``cfg.epochs``, early stopping, or ``stop_after`` epochs in this call (a test's
        interruption); returns the summary (also ``<run>/summary.json``)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.json").write_text(json.dumps(self.config_dict(), indent=2) + "\n")
        done_here = 0
        while self.epoch < self.cfg.epochs and self.bad_epochs < self.cfg.patience:
            if stop_after is not None and done_here >= stop_after:
                break
            t0 = time.perf_counter()
            loss = self.train_epoch()
            if not np.isfinite(loss):
                raise CremaError(f"fine-tuning loss became {loss} in epoch {self.epoch}; lower --lr")
            auroc = macro_auroc(self.y_val, predict(self.model, self.reader, self.val_rows, self.data_cfg,
                                                    batch=self.cfg.eval_batch, amp=self.cfg.amp))
            row = {"epoch": self.epoch, "step": self.step, "train_loss": loss, "val_macro_auroc": auroc,
                   "lr": self.optimizer.param_groups[-1]["lr"], "seconds": time.perf_counter() - t0}
            self.history.append(row)
            self.epoch += 1
            done_here += 1
            if auroc > self.best + self.cfg.min_delta:
                self.best, self.best_epoch, self.bad_epochs = auroc, row["epoch"], 0
                save_checkpoint(self.run_dir / "best", self.state(), keep_last=1)
            else:
                self.bad_epochs += 1
            save_checkpoint(self.run_dir, self.state(), keep_last=self.cfg.keep_last)
            self._write_metrics()
            if self.progress:
                print(f"epoch {row['epoch']:3d}  loss {loss:.4f}  val macro AUROC {auroc:.4f}"
                      f"{'  *' if self.bad_epochs == 0 else ''}", file=sys.stderr, flush=True)
        return self.summary()

    def _write_metrics(self) -> None:
        # Rewritten whole from the checkpointed history: a resumed run never holds an epoch twice.
        text = "".join(json.dumps(r) + "\n" for r in self.history)
        (self.run_dir / "metrics.jsonl").write_text(text)

    def summary(self) -> dict:
        out = {"epochs_run": self.epoch, "steps": self.step, "best_epoch": self.best_epoch,
               "best_val_macro_auroc": self.best, "stopped_early": self.bad_epochs >= self.cfg.patience,
               "best_checkpoint": str(self.run_dir / "best"), "history": self.history}
        (self.run_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
        return out

    def best_model(self) -> Classifier:
        """The classifier at the best validation epoch (from ``<run>/best``), on this run's device."""
        ckpt = read_checkpoint(self.run_dir / "best")
        model = build_classifier(self.encoder, len(self.classes), self.cfg.attention).to(self.device)
        model.load_state_dict(ckpt["model"])
        return model.eval()
