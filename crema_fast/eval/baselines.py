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


def probe_task(task: Task, ckpt, *, random_init: bool = False, attention: str = "sdpa", seed: int = 0,
               n_boot: int = 1000, batch_size: int = 256, progress: bool = False) -> dict:
    """The linear probe on the frozen embeddings of checkpoint ``ckpt``'s encoder (``random_init``: of an
    untrained encoder of its architecture, seeded), on the task's own split. Same return as finetune_task."""
    from crema_fast.eval.embed import embed_rows, load_encoder
    from crema_fast.eval.metrics import evaluate
    from crema_fast.eval.probe import align, fit_probe
    from crema_fast.eval.report import build_report

    enc = load_encoder(ckpt, random_init=random_init, attention=attention, seed=seed)
    ids, emb = embed_rows(enc, task.reader, batch_size=batch_size, progress=progress)
    x, y, classes = align(ids, emb, task.table), task.table.y, list(task.table.classes)
    tr, va, te = (task.parts[k] for k in ("train", "val", "test"))
    probe = fit_probe(x[tr], y[tr], x[va], y[va], classes=classes, seed=seed)
    s_te, s_va = probe.predict_scores(x[te]), probe.predict_scores(x[va])
    metrics = evaluate(y[te], s_te, y_val=y[va], scores_val=s_va, n_boot=n_boot, seed=seed, classes=classes)
    d = task.describe()
    where = enc.meta["checkpoint"]
    report = build_report(metrics, checkpoint=None if random_init else where, store=d["store"],
                          label_set=d["label_set"], split=d["split"], method="linear probe",
                          encoder=f"random init (seed {seed}), architecture of {where}" if random_init
                          else "pretrained",
                          rows=d["n"], probe_C=probe.C, probe_val_auroc={str(k): v for k, v in probe.val_auroc.items()})
    return {"report": report, "y_test": y[te], "scores_test": s_te}


def compare(task: Task, ckpt, out_dir, *, baselines: bool = True, finetune: bool = False,
            finetune_cfg: FinetuneConfig | None = None, attention: str = "sdpa", seed: int = 0,
            n_boot: int = 1000, resume: bool = False, progress: bool = False) -> list[dict]:
    """The methods of the module docstring on one task; each report in ``out_dir/<method>/``, the summary
    rows in ``out_dir/comparison.json``. Returns the rows: {method, encoder, macro_auroc, macro_auroc_ci,
    macro_ap, n_test, report} and, for every method after the first, minus_pretrained_probe
    (``paired_difference`` of its scores and the pretrained probe's). finetune_cfg: the fine-tuning
    settings (the scratch run's layer_decay is 1)."""
    import json

    from crema_fast.eval.report import write_report

    out_dir = Path(out_dir)
    cfg = finetune_cfg or FinetuneConfig(attention=attention, seed=seed)
    encoder = pretrained_encoder(ckpt)
    plan = {"pretrained_probe": lambda: probe_task(task, ckpt, attention=attention, seed=seed, n_boot=n_boot,
                                                   progress=progress)}
    if baselines:
        plan["random_init_probe"] = lambda: probe_task(task, ckpt, random_init=True, attention=attention, seed=seed,
                                                       n_boot=n_boot, progress=progress)
        plan["scratch_supervised"] = lambda: finetune_task(
            task, scratch_like(encoder), dataclasses.replace(cfg, layer_decay=1.0), out_dir / "scratch_supervised",
            resume=resume and _has_run(out_dir / "scratch_supervised"), n_boot=n_boot, progress=progress)
    if finetune:
        plan["pretrained_finetune"] = lambda: finetune_task(
            task, encoder, cfg, out_dir / "pretrained_finetune",
            resume=resume and _has_run(out_dir / "pretrained_finetune"), n_boot=n_boot, progress=progress)
    rows, scores = [], {}
    for method, run in plan.items():
        result = run()
        report = {**result["report"], "comparison": method}
        paths = write_report(out_dir / method, report, y_true=result["y_test"], scores=result["scores_test"])
        np.save(out_dir / method / "scores_test.npy", result["scores_test"])  # for paired comparisons later
        scores[method] = result["scores_test"]
        m = report["metrics"]
        rows.append({"method": method, "encoder": report["encoder"], "macro_auroc": m["macro_auroc"],
                     "macro_auroc_ci": m["macro_auroc_ci"], "macro_ap": m["macro_ap"], "n_test": m["n"],
                     "report": paths["json"]})
    if n_boot:
        ref = scores["pretrained_probe"]
        for r in rows[1:]:
            r["minus_pretrained_probe"] = paired_difference(task.y("test"), scores[r["method"]], ref,
                                                            n_boot=n_boot, seed=seed)
    summary = {"checkpoint": encoder.source, **task.describe(), "n_boot": n_boot, "seed": seed, "methods": rows}
    (out_dir / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rows


def paired_difference(y, scores_a, scores_b, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Macro AUROC of a minus that of b on the same rows, with a paired bootstrap 95% interval: both
    methods are scored on the same resamples (``bootstrap_macro_auroc`` with one seed draws the same rows
    for both, and rejects the same draws, which depend on y alone), so the interval is the difference's:
    narrower than the two methods' own intervals suggest when their errors are correlated (the same hard
    ECGs are hard for both). Returns {"delta", "ci", "p_a_not_better"}:
    the share of resamples in which a does not beat b."""
    from crema_fast.eval.metrics import bootstrap_macro_auroc, macro_auroc

    ba, _ = bootstrap_macro_auroc(y, scores_a, n_boot=n_boot, seed=seed)
    bb, _ = bootstrap_macro_auroc(y, scores_b, n_boot=n_boot, seed=seed)
    d = ba - bb
    return {"delta": float(macro_auroc(y, scores_a) - macro_auroc(y, scores_b)),
            "ci": [float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5))],
            "p_a_not_better": float((d <= 0).mean())}


def _has_run(run_dir: Path) -> bool:
    from crema_fast.train.checkpoint import list_checkpoints

    return bool(list_checkpoints(run_dir))


def format_comparison(rows: list[dict]) -> str:
    """The comparison as a table: method, macro AUROC [95% CI], macro AP, test rows."""
    lines = [f"{'method':<20}  {'macro AUROC':>11}  {'95% CI':>15}  {'macro AP':>8}  {'test':>4}  "
             f"{'minus pretrained_probe [paired 95% CI]':>38}"]
    for r in rows:
        ci = r["macro_auroc_ci"]
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "-"
        d = r.get("minus_pretrained_probe")
        d_text = f"{d['delta']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d else ""
        lines.append(f"{r['method']:<20}  {r['macro_auroc']:>11.3f}  {ci_text:>15}  {r['macro_ap']:>8.3f}  "
                     f"{r['n_test']:>4}  {d_text:>38}")
    return "\n".join(lines)
