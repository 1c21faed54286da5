"""Fine-tuning (crema_fast/eval/finetune.py, classifier.py) on real PTB-XL rows with the tiny preset:
exact resume, the layer-wise learning rates, pretrained weights loaded as they were saved, errors."""

import numpy as np
import pytest
import torch

from crema_fast.errors import CremaError
from crema_fast.eval.classifier import Classifier, llrd_groups
from crema_fast.eval.finetune import (FinetuneConfig, Finetuner, pretrained_encoder, scratch_encoder)
from crema_fast.train.checkpoint import read_checkpoint, save_checkpoint

# 3 epochs of 3 steps: warmup, cosine and early-stopping state all cross the interruption.
CFG = FinetuneConfig(epochs=3, batch_size=8, lr=2e-3, warmup_epochs=1, patience=5, attention="ref",
                     eval_batch=16, seed=3)


@pytest.fixture(scope="module")
def task(small_store, scp_statements):
    """24 training and 16 validation rows of PTB-XL records 1-120 (superdiagnostic), restricted to the
    classes both parts hold with positives and negatives."""
    from zarr_store.reader import StoreReader

    from crema_fast.eval.labels import load_labels

    table = load_labels(small_store, "superdiagnostic", scp_statements=scp_statements)
    tr, va = np.arange(24), np.arange(24, 40)
    keep = [j for j in range(len(table.classes))
            if 0 < table.y[va, j].sum() < len(va) and table.y[tr, j].sum() > 0]
    assert len(keep) >= 2, table.classes
    y = table.y[:, keep]
    return (StoreReader(small_store), table.rows[tr], y[tr], table.rows[va], y[va],
            [table.classes[j] for j in keep])


def _tuner(task, run_dir, cfg=CFG, resume=None, encoder=None):
    reader, tr, ytr, va, yva, classes = task
    return Finetuner(cfg, run_dir, reader, tr, ytr, va, yva, encoder=encoder or scratch_encoder("tiny"),
                     classes=classes, resume=resume)


def test_resume_equals_uninterrupted(task, tmp_path):
    whole = _tuner(task, tmp_path / "whole")
    whole.fit()
    part = _tuner(task, tmp_path / "part")
    part.fit(stop_after=1)
    assert part.epoch == 1 and part.step == 3
    resumed = _tuner(task, tmp_path / "part", resume=read_checkpoint(tmp_path / "part"))
    assert resumed.epoch == 1 and resumed.step == 3
    resumed.fit()
    assert resumed.step == whole.step == 9
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["val_macro_auroc"] == b["val_macro_auroc"]
        assert a["lr"] == b["lr"]
    for (name, p), (_, q) in zip(whole.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), name
    assert resumed.best_epoch == whole.best_epoch
    for name, p in whole.best_model().state_dict().items():
        assert torch.equal(p, resumed.best_model().state_dict()[name]), name
    # the losses are real: not constant, and finite
    losses = [r["train_loss"] for r in whole.history]
    assert len(set(losses)) == 3 and all(np.isfinite(losses))


def test_resume_refuses_another_config(task, tmp_path):
    _tuner(task, tmp_path).fit(stop_after=1)
    other = FinetuneConfig(**{**CFG.to_dict(), "lr": 1e-4})
    with pytest.raises(CremaError, match="another fine-tuning config"):
        _tuner(task, tmp_path, cfg=other, resume=read_checkpoint(tmp_path))


def test_layer_wise_lr_decay():
    enc = scratch_encoder("tiny")  # depth 2: layers 0 (embeddings), 1, 2 (blocks), 3 (norm + head)
    model = Classifier(enc.model, 5, "ref")
    groups = llrd_groups(model, 1e-3, 0.5, 0.05)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["sit.patch_embed.proj.weight"])] == (1e-3 * 0.5 ** 3, 0.05)
    assert lr_of[id(named["sit.lead_embed"])] == (1e-3 * 0.5 ** 3, 0.05)  # (12, D): a matrix, decayed
    assert lr_of[id(named["sit.sep_token"])] == (1e-3 * 0.5 ** 3, 0.0)
    assert lr_of[id(named["sit.blocks.0.attn.qkv.weight"])] == (1e-3 * 0.5 ** 2, 0.05)
    assert lr_of[id(named["sit.blocks.1.mlp.0.bias"])] == (1e-3 * 0.5, 0.0)
    assert lr_of[id(named["sit.norm.weight"])] == (1e-3, 0.0)
    assert lr_of[id(named["head.weight"])] == (1e-3, 0.05)
    # every encoder parameter in exactly one group; the decoder in none
    trainable = {n for n, p in named.items() if id(p) in lr_of}
    assert sum(len(g["params"]) for g in groups) == len(trainable)
    assert not any(n.startswith(("sit.dec", "sit.decoder", "sit.mask_token")) for n in trainable)
    assert {n for n in named if n.startswith(("sit.blocks", "sit.patch_embed", "head"))} <= trainable


def test_pretrained_weights_load_and_decoder_stays(task, tmp_path):
    from crema_fast.model import CremaModel
    from crema_fast.train.config import build_config

    cfg = build_config("tiny")
    torch.manual_seed(11)
    crema = CremaModel(cfg.model, cfg.loss, attention="ref")
    save_checkpoint(tmp_path / "pre", {"step": 0, "model": crema.state_dict(), "optimizer": {}, "scheduler": {},
                                       "config": cfg.to_dict()})
    enc = pretrained_encoder(tmp_path / "pre")
    tuner = _tuner(task, tmp_path / "ft", cfg=FinetuneConfig(**{**CFG.to_dict(), "epochs": 1}), encoder=enc)
    x = torch.randn(2, 12, cfg.model.signal_length)
    with torch.no_grad():
        assert torch.equal(tuner.model.sit.encode(x), crema.encode(x))
    tuner.fit()
    after = tuner.model.sit.state_dict()
    before = {k[4:]: v for k, v in crema.state_dict().items() if k.startswith("sit.")}
    assert torch.equal(after["dec_pred.weight"], before["dec_pred.weight"])  # frozen, unused
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], before["blocks.0.attn.qkv.weight"])


def test_validation_class_without_positives(task, tmp_path):
    reader, tr, ytr, va, yva, classes = task
    yva = yva.copy()
    yva[:, 1] = 0
    with pytest.raises(CremaError, match=f"class '{classes[1]}' has no positive"):
        Finetuner(CFG, tmp_path, reader, tr, ytr, va, yva, encoder=scratch_encoder("tiny"), classes=classes)


def test_targets_shape_error(task, tmp_path):
    reader, tr, ytr, va, yva, classes = task
    with pytest.raises(ValueError, match=r"y_train: expected targets of shape \(24, C\)"):
        Finetuner(CFG, tmp_path, reader, tr, ytr[:5], va, yva, encoder=scratch_encoder("tiny"))


def test_finetune_command_end_to_end(ptbxl_store, scp_statements, tmp_path, capsys):
    """crema-fast finetune on the 500 real records: one epoch from scratch, the report on strat_fold 10;
    --resume of the finished run reproduces the same test figures; the usage errors are one line."""
    import json

    from crema_fast.cli import main

    out = tmp_path / "ft"
    argv = ["finetune", ptbxl_store, "--from-scratch", "--out", str(out), "--epochs", "1", "--batch-size", "64",
            "--attention", "ref", "--n-boot", "200", "--scp-statements", scp_statements, "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    assert report["label_set"] == "superdiagnostic" and report["split"].startswith("PTB-XL strat_fold")
    assert report["rows"] == {"train": 352, "val": 72, "test": 64} and m["n"] == 64
    assert m["classes"] == ["NORM", "MI", "STTC", "CD", "HYP"]
    assert m["macro_auroc"] == pytest.approx(np.mean(list(m["per_class_auroc"].values())))
    assert m["macro_auroc_ci"][0] <= m["macro_auroc"] <= m["macro_auroc_ci"][1]
    assert report["encoder"] == "scratch:tiny" and report["checkpoint"] is None
    assert report["config"]["layer_decay"] == 1.0 and (out / "report_roc.png").is_file()
    assert report["finetune"]["epochs_run"] == 1 and report["finetune"]["steps"] == 6  # ceil(352 / 64)
    assert "macro AUROC" in capsys.readouterr().out

    assert main(["finetune", ptbxl_store, "--out", str(out), "--resume", "--n-boot", "200", "--epochs", "3",
                 "--scp-statements", scp_statements, "--no-progress"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["metrics"] == m and again["finetune"]["epochs_run"] == 1  # the saved run, not 3 epochs
    assert "ignoring --epochs" in capsys.readouterr().err

    assert main(argv) == 2
    assert "already holds a fine-tuning run" in capsys.readouterr().err
    assert main(["finetune", ptbxl_store, "--out", str(tmp_path / "other")]) == 2
    assert "expected --ckpt CKPT or --from-scratch" in capsys.readouterr().err


def test_finetune_command_checkpoint_of_another_preset(tmp_path, capsys):
    """--ckpt of a tiny model with --preset small: one line naming the fields, before any data is read."""
    from crema_fast.cli import main
    from crema_fast.model import CremaModel
    from crema_fast.train.config import build_config

    cfg = build_config("tiny")
    save_checkpoint(tmp_path / "pre", {"step": 0, "model": CremaModel(cfg.model, cfg.loss).state_dict(),
                                       "optimizer": {}, "scheduler": {}, "config": cfg.to_dict()})
    assert main(["finetune", str(tmp_path / "no-store"), "--ckpt", str(tmp_path / "pre"), "--preset", "small",
                 "--out", str(tmp_path / "ft")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a 'small' model" in err and "model.dim: 64 vs 384" in err
