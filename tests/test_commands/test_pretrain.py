"""``crema-fast pretrain`` (crema_fast.commands.pretrain): the dry run's parameter counts, a short run's
summary, resume, config precedence, the preset named by --dry-run, --print-config. What ``--data``
resolves to: test_data.py."""

import json
import os
import re
from pathlib import Path

import pytest

from crema_fast.cli import main
from crema_fast.commands.pretrain import param_counts
from crema_fast.train.checkpoint import read_checkpoint
from crema_fast.train.config import build_config
from crema_fast.train.engine import build_model


def _counts(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("encoder", "decoder", "head", "total"):
            out[parts[0]] = int(parts[1].replace(",", ""))
    return out


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_dry_run_prints_parameter_counts(preset, capsys):
    assert main(["pretrain", "--dry-run", "--preset", preset]) == 0
    out = capsys.readouterr().out
    counts = _counts(out)
    model = build_model(build_config(preset))
    c = model.model_cfg
    assert counts["total"] == model.num_params() == counts["encoder"] + counts["decoder"] + counts["head"]
    # The projection head by hand: Linear(D, D) + Linear(D, proj_dim), with biases.
    assert counts["head"] == c.dim * c.dim + c.dim + c.dim * c.proj_dim + c.proj_dim
    # The decoder by hand: embed D->Dd, mask token, lead embeddings, blocks, norm, prediction Dd->S.
    dd, h = c.dec_dim, c.dec_mlp_hidden
    block = 2 * 2 * dd + (3 * dd * dd + 3 * dd) + (dd * dd + dd) + (dd * h + h) + (h * dd + dd)
    dec = (c.dim * dd + dd) + dd + c.n_leads * dd + c.dec_depth * block + 2 * dd + (dd * c.patch + c.patch)
    assert counts["decoder"] == dec
    assert json.loads(out[: out.index("parameters:")])["model"] == c.to_dict()
    if preset == "base":
        assert 80e6 < counts["encoder"] < 90e6  # a ViT-B sized encoder
        from crema_fast.train.memory import estimate

        fits = estimate(build_config("base"), model.num_params()).largest_batch(80 * 2**30)
        shown = re.search(r"H100 80GB\s+([\d,]+)\s+with act_ckpt\s+([\d,]+)", out)  # the largest batch
        assert int(shown.group(1).replace(",", "")) == fits > 256


def test_short_run_prints_a_summary_and_resumes(demo_store, tmp_path, capsys, monkeypatch):
    """Started with relative --data and --out, resumed from another working directory: the checkpoint
    names the store by its absolute path."""
    run = tmp_path / "run"
    monkeypatch.chdir(tmp_path)
    args = ["pretrain", "--data", os.path.relpath(demo_store, tmp_path), "--steps", "4", "--out", "run",
            "--no-progress", "--set", "train.batch_size=6", "train.log_every=2", "train.ckpt_every=2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "steps       4 (this run: 0 -> 4" in out
    assert str(Path("run", "checkpoints", "step_0000004.pt")) in out  # as named by --out
    for name in ("loss.png", "reconstruction.png", "metrics.jsonl"):
        assert (run / name).is_file() and str(Path("run", name)) in out
    assert json.loads((run / "summary.json").read_text())["steps"] == 4 and (run / "config.json").is_file()
    # The same folder again is refused; --resume continues it with a longer schedule.
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert read_checkpoint(run)["store"] == str(Path(demo_store).resolve())
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the relative --data no longer names the store from here
    assert main(["pretrain", "--resume", str(run), "--steps", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "steps       6 (this run: 4 -> 6" in out
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]
    assert main(["pretrain", "--resume", str(run), "--no-progress"]) == 2  # nothing left to do: said so
    assert "already at step 6" in capsys.readouterr().err


def test_config_errors_are_one_line(capsys):
    assert main(["pretrain", "--dry-run", "--set", "optim.lr=-1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crema-fast pretrain: error: optim.lr") and err.count("\n") == 1


def test_crop_not_a_multiple_of_the_patch_is_a_one_line_error(capsys):
    assert main(["pretrain", "--dry-run", "--set", "data.crop=2000"]) == 2  # 2000 = 26 x 75 + 50
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "crop: expected a positive multiple of MaskConfig.patch=75, got 2000" in err


def test_param_counts_cover_every_parameter():
    model = build_model(build_config("tiny"))
    assert param_counts(model)["total"] == sum(p.numel() for p in model.parameters())


def test_config_file_and_flags_precedence(tmp_path, capsys):
    """The file's preset beats the --data default (tiny); --steps beats the file; --set beats both."""
    f = tmp_path / "run.toml"
    f.write_text('preset = "small"\n[train]\nsteps = 5\nbatch_size = 64\n')
    argv = ["pretrain", "--dry-run", "--config", str(f), "--data", str(tmp_path), "--steps", "7",
            "--set", "train.batch_size=32"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cfg = json.loads(out[: out.index("parameters:")])
    assert cfg["model"]["dim"] == 384 and cfg["train"]["steps"] == 7 and cfg["train"]["batch_size"] == 32
    assert cfg["train"]["data"] == str(tmp_path)


@pytest.mark.parametrize("argv,named", [([], "demo (the default without --data)"),
                                        (["--preset", "small"], "small (--preset)"),
                                        (["--data", "some/folder"], "tiny (the default with --data)")])
def test_dry_run_names_its_preset(argv, named, capsys):
    assert main(["pretrain", "--dry-run", *argv]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"preset: {named}"


def test_dry_run_names_the_config_files_preset(tmp_path, capsys):
    f = tmp_path / "run.toml"
    f.write_text('preset = "base"\n')
    assert main(["pretrain", "--dry-run", "--config", str(f)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"preset: base (--config {f})"


def test_print_config_prints_the_reference(capsys):
    from crema_fast.train.config_doc import reference

    assert main(["pretrain", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert out == reference()
    assert "| `loss.tau` | `0.2` | NT-Xent temperature. |" in out


def test_loss_flag_selects_the_fused_loss(capsys):
    """--loss triton sets train.loss (the model checks at construction that the kernel can run here)."""
    assert main(["pretrain", "--dry-run", "--preset", "tiny", "--loss", "triton", "--attention", "ref"]) == 0
    out = capsys.readouterr().out
    train = json.loads(out[: out.index("parameters:")])["train"]
    assert (train["loss"], train["attention"]) == ("triton", "ref")


@pytest.mark.parametrize("sets, named", [
    (["train.bogus=1"], "train: unknown fields ['bogus']"),
    (["optim.lr=nan"], "optim.lr: expected a finite number, got 'nan'"),
    (["loss.tau=nan"], "loss.tau: expected a finite number"),
    (["optim.lr=1e999"], "optim.lr: expected a finite number, got inf"),  # parsed as a float: inf
    (["train.batch_size=0"], "train.batch_size: expected an int >= 1, got 0"),
    (["train.steps=-5"], "train.steps: expected an int >= 1, got -5"),
    (["data.crop=0"], "DataConfig.crop: expected a positive int"),
    (["mask.ratio=0"], "mask.ratio: expected a fraction in (0, 1) for pretraining"),
    (["mask.ratio=1"], "MaskConfig.ratio: expected a fraction in [0, 1), got 1.0"),
    (["mask.patch=77", "model.patch=77"], "crop: expected a positive multiple of MaskConfig.patch=77"),
    (["train.batch_size=1"], "train.batch_size: expected >= 2 (the contrastive term's negatives"),
])
def test_cli_misuse_is_one_line_before_any_work(sets, named, tmp_path, monkeypatch, capsys):
    """Each misuse exits 2 with one line naming the field, before anything is converted or written."""
    monkeypatch.chdir(tmp_path)
    assert main(["pretrain", "--no-progress", "--set", *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err
    assert list(tmp_path.iterdir()) == []


def test_batch_of_one_without_the_contrastive_term_is_allowed():
    cfg = build_config("tiny", sets=["train.batch_size=1", "loss.lam=0"])
    assert cfg.train.batch_size == 1


def test_out_onto_a_file_and_a_store_of_one_row(tmp_path, monkeypatch, capsys):
    from zarr_store.convert import convert

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main(["pretrain", "--no-progress", "--out", "afile"]) == 2
    err = capsys.readouterr().err
    assert err == "crema-fast pretrain: error: --out: expected a run folder (new, or one to write into), got the file afile\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # nothing converted
    src = tmp_path / "one"
    src.mkdir()
    demo = Path(__file__).resolve().parents[2] / "crema_fast" / "demo_data" / "records500" / "00000"
    for f in demo.glob("00001_hr.*"):
        (src / f.name).write_bytes(f.read_bytes())
    convert([src], tmp_path / "one.zarr", progress=False)
    assert main(["pretrain", "--no-progress", "--data", "one.zarr", "--set", "train.batch_size=2",
                 "--out", "r"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too few records for a batch of 2" in err, err
