"""The comparison that measures pretraining (crema_fast/eval/baselines.py, ``crema-fast evaluate``) on the
500 real PTB-XL records: the baselines use the same rows, split and initial weights as they claim."""

import json

import numpy as np
import pytest
import torch

from crema_fast.eval.baselines import Task, format_comparison, scratch_like
from crema_fast.eval.finetune import build_classifier, pretrained_encoder
from crema_fast.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def seed0_ckpt(tmp_path_factory):
    """A "pretraining" checkpoint whose weights are the tiny preset's seed-0 initialisation, exactly what
    the random-init baseline builds with seed 0."""
    from crema_fast.model import CremaModel
    from crema_fast.train.config import build_config

    cfg = build_config("tiny")
    torch.manual_seed(0)
    model = CremaModel(cfg.model, cfg.loss, attention="sdpa")
    run = tmp_path_factory.mktemp("seed0")
    save_checkpoint(run, {"step": 0, "model": model.state_dict(), "optimizer": {}, "scheduler": {},
                          "config": cfg.to_dict()})
    return str(run)


def test_random_init_probe_and_scratch_start_from_the_same_encoder(seed0_ckpt):
    from crema_fast.eval.embed import load_encoder

    probe_enc = load_encoder(seed0_ckpt, random_init=True, seed=5).model.sit.state_dict()
    torch.manual_seed(5)  # what Finetuner does with FinetuneConfig(seed=5)
    scratch = build_classifier(scratch_like(pretrained_encoder(seed0_ckpt)), 5, "sdpa").sit.state_dict()
    assert probe_enc.keys() == scratch.keys()
    for k in probe_enc:
        assert torch.equal(probe_enc[k], scratch[k]), k
    # and neither is the checkpoint's (seed 0) encoder
    saved = pretrained_encoder(seed0_ckpt).state
    assert not torch.equal(saved["blocks.0.attn.qkv.weight"], scratch["blocks.0.attn.qkv.weight"])


def test_task_split_is_the_probe_commands_split(ptbxl_store, scp_statements):
    from crema_fast.eval.labels import load_labels
    from crema_fast.eval.splits import split_rows

    task = Task.from_store(ptbxl_store, "superdiagnostic", scp_statements=scp_statements)
    table = load_labels(ptbxl_store, "superdiagnostic", scp_statements=scp_statements)
    probe_parts = split_rows(len(table), folds=table.strat_fold, patient_ids=table.patient_id, seed=0)
    for k in ("train", "val", "test"):
        assert np.array_equal(task.parts[k], probe_parts[k])
    assert set(table.strat_fold[task.parts["test"]]) == {10} and set(table.strat_fold[task.parts["val"]]) == {9}
    assert task.y("test").sum(axis=0).tolist() == [36, 8, 16, 11, 7]  # NORM MI STTC CD HYP in fold 10


def test_evaluate_command_with_baselines(ptbxl_store, scp_statements, seed0_ckpt, tmp_path, capsys):
    """With a checkpoint that holds the seed-0 initialisation, the pretrained probe and the random-init
    probe (seed 0) see the same embeddings: identical figures, which shows the baseline is the same probe
    on the same rows. The scratch run is a real (one-epoch) supervised fit."""
    from crema_fast.cli import main

    out = tmp_path / "cmp"
    assert main(["evaluate", ptbxl_store, "--ckpt", seed0_ckpt, "--baselines", "--out", str(out), "--epochs", "1",
                 "--batch-size", "64", "--n-boot", "200", "--scp-statements", scp_statements, "--no-progress"]) == 0
    summary = json.loads((out / "comparison.json").read_text())
    rows = {r["method"]: r for r in summary["methods"]}
    assert list(rows) == ["pretrained_probe", "random_init_probe", "scratch_supervised"]
    a, b = rows["pretrained_probe"], rows["random_init_probe"]
    assert a["macro_auroc"] == b["macro_auroc"] and a["macro_auroc_ci"] == b["macro_auroc_ci"]
    assert b["minus_pretrained_probe"] == {"delta": 0.0, "ci": [0.0, 0.0], "p_a_not_better": 1.0}
    for r in rows.values():
        assert r["n_test"] == 64 and r["macro_auroc_ci"][0] <= r["macro_auroc"] <= r["macro_auroc_ci"][1]
        report = json.loads(open(r["report"]).read())
        assert report["split"].startswith("PTB-XL strat_fold") and report["label_set"] == "superdiagnostic"
    scratch = json.loads((out / "scratch_supervised" / "report.json").read_text())
    assert scratch["method"] == "fine-tuning" and scratch["config"]["layer_decay"] == 1.0
    assert scratch["checkpoint"] is None and scratch["finetune"]["steps"] == 6
    assert json.loads((out / "random_init_probe" / "report.json").read_text())["checkpoint"] is None
    assert (out / "pretrained_probe" / "report_roc.png").is_file()
    printed = capsys.readouterr().out
    assert "random_init_probe" in printed and "352 train / 72 val / 64 test rows" in printed


def test_format_comparison():
    text = format_comparison([{"method": "pretrained_probe", "macro_auroc": 0.81234, "macro_auroc_ci": [0.7, 0.9],
                               "macro_ap": 0.5, "n_test": 64}])
    assert "0.812" in text and "[0.700, 0.900]" in text and text.splitlines()[1].startswith("pretrained_probe")


def test_paired_difference_is_paired():
    """Two correlated methods scored on the same resamples: one that adds a little noise to the other's
    scores loses on every resample, though their unpaired intervals overlap; the interval is the
    percentiles of the per-resample differences of bootstrap_macro_auroc with one seed."""
    from crema_fast.eval.baselines import paired_difference
    from crema_fast.eval.metrics import bootstrap_macro_auroc, evaluate

    rng = np.random.default_rng(1)
    y = (rng.random((200, 3)) < 0.3).astype(np.float32)
    good = y + rng.normal(0, 0.8, y.shape)
    worse = good + rng.normal(0, 0.4, y.shape)
    d = paired_difference(y, worse, good, n_boot=500, seed=2)
    ea, eb = evaluate(y, worse, n_boot=500, seed=2), evaluate(y, good, n_boot=500, seed=2)
    assert d["delta"] == pytest.approx(ea["macro_auroc"] - eb["macro_auroc"])
    assert d["ci"][1] < 0 and d["p_a_not_better"] == 1.0
    assert ea["macro_auroc_ci"][1] > eb["macro_auroc_ci"][0]  # the unpaired intervals overlap
    boots = [bootstrap_macro_auroc(y, s, n_boot=500, seed=2)[0] for s in (worse, good)]
    diff = boots[0] - boots[1]
    assert d["ci"] == [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))]
    same = paired_difference(y, good, good, n_boot=100, seed=0)
    assert same == {"delta": 0.0, "ci": [0.0, 0.0], "p_a_not_better": 1.0}
