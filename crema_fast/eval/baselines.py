"""Evaluation tasks on one label table and split, and the comparison that measures pretraining.

    task = Task.from_store(store, "superdiagnostic")           # labels + split (strat_fold or patients)
    ft = finetune_task(task, pretrained_encoder(ckpt), FinetuneConfig(), run_dir)
    rows = compare(task, ckpt, out_dir)                          # the three figures below, one report each

``compare`` runs, on the same rows, classes and split:
  pretrained_probe     the linear probe on the frozen embeddings of the pretrained encoder
  random_init_probe    the same probe on an encoder of the same architecture with its initial (seeded,
                       untrained) weights: what the architecture and the preprocessing give for free
  scratch_supervised   the same encoder, randomly initialised, trained end to end on the labels
                       (``finetune``, plain AdamW: layer_decay 1, since no layer holds anything to protect)
  pretrained_finetune  (``finetune=True``) the pretrained encoder fine-tuned the same way, with LLRD
Each result is ``metrics.evaluate`` on the test part (macro AUROC with its bootstrap 95% interval) and
names the checkpoint, store, label set and split it came from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crema_fast.eval.finetune import Encoder, FinetuneConfig, Finetuner, pretrained_encoder
from crema_fast.train.checkpoint import read_checkpoint


@dataclass(frozen=True)
class Task:
    """A labelled store and its split: ``table`` (labels.LabelTable), ``parts`` {"train", "val", "test"}
    -> positions into the table's rows, ``split`` its one-line name, ``reader`` the open store."""

    reader: object
    table: object
    parts: dict
    split: str

    @classmethod
    def from_store(cls, store, label_set: str, *, csv=None, scp_statements=None, seed: int = 0) -> "Task":
        from zarr_store.reader import StoreReader

        from crema_fast.eval.labels import load_labels
        from crema_fast.eval.splits import describe_split, split_rows

        reader = store if isinstance(store, StoreReader) else StoreReader(store)
        table = load_labels(reader, label_set, csv=csv, scp_statements=scp_statements)
        parts = split_rows(table, seed=seed)
        return cls(reader, table, parts, describe_split(table, seed=seed))

    def rows(self, part: str) -> np.ndarray:
        """Store rows of a part, int64 (n,)."""
        return self.table.rows[self.parts[part]]

    def y(self, part: str) -> np.ndarray:
        """Targets of a part, float32 (n, C)."""
        return self.table.y[self.parts[part]]

    def describe(self) -> dict:
        store = str(self.reader.store)
        store = store if "://" in store else str(Path(store).resolve())  # reports name the store absolutely
        return {"store": store, "label_set": self.table.label_set, "split": self.split,
                "classes": list(self.table.classes), "n": {k: int(len(v)) for k, v in self.parts.items()}}


def finetune_task(task: Task, encoder: Encoder, cfg: FinetuneConfig, run_dir, *, resume: bool = False,
                  n_boot: int = 1000, progress: bool = False) -> dict:
    """Fine-tune on train, stop early on val, score the best epoch on test. ``resume``: continue the run in
    ``run_dir`` with its saved config (``cfg`` is then not used). Returns {"report": report.build_report's
    dict, "y_test": (n, C), "scores_test": (n, C)}."""
    from crema_fast.eval.classifier import predict
    from crema_fast.eval.metrics import evaluate
    from crema_fast.eval.report import build_report

    ckpt = read_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        cfg = FinetuneConfig.from_dict(ckpt["config"]["finetune"])
    tuner = Finetuner(cfg, run_dir, task.reader, task.rows("train"), task.y("train"), task.rows("val"),
                      task.y("val"), encoder=encoder, classes=task.table.classes, meta=task.describe(),
                      resume=ckpt, progress=progress)
    summary = tuner.fit()
    best = tuner.best_model()
    s_val = predict(best, task.reader, task.rows("val"), tuner.data_cfg, batch=cfg.eval_batch, amp=cfg.amp)
    s_test = predict(best, task.reader, task.rows("test"), tuner.data_cfg, batch=cfg.eval_batch, amp=cfg.amp)
    metrics = evaluate(task.y("test"), s_test, y_val=task.y("val"), scores_val=s_val, n_boot=n_boot,
                       seed=cfg.seed, classes=list(task.table.classes))
    scratch = encoder.source.startswith("scratch:")
    d = task.describe()
    report = build_report(metrics, checkpoint=None if scratch else encoder.source, store=d["store"],
                          label_set=d["label_set"], split=d["split"], method="fine-tuning",
                          encoder=encoder.source if scratch else "pretrained", rows=d["n"],
                          finetune={k: v for k, v in summary.items() if k != "history"}, config=cfg.to_dict(),
                          run_dir=str(run_dir))
    return {"report": report, "y_test": task.y("test"), "scores_test": s_test}


def scratch_like(encoder: Encoder) -> Encoder:
    """An encoder of the same architecture and data pipeline, without its weights (random init)."""
    return dataclasses.replace(encoder, state=None, source=f"scratch:{Path(encoder.source).name} architecture")
