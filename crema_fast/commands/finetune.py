"""``crema-fast finetune``: the whole encoder with a linear head, trained on a store's labels.

    crema-fast finetune STORE --ckpt runs/tiny-x --labels superdiagnostic --out runs/ft-x
    crema-fast finetune STORE --from-scratch --preset tiny --labels superdiagnostic --out runs/scratch-x
    crema-fast finetune STORE --out runs/ft-x --resume              # continue, with the saved settings

Training rows, validation rows (early stopping on their macro AUROC) and test rows come from the split:
PTB-XL's strat_fold (train 1-8, val 9, test 10) where the store has folds, else a seeded
patient-disjoint split. The best epoch's model is scored on the test part; the report (macro AUROC with
its bootstrap 95% interval, per-class AUROC, AP, F1 at validation thresholds) goes to
``RUN_DIR/report.json`` with ROC curves in ``report_roc.png`` (crema_fast/eval/report.py) and is printed.
Settings and their defaults: crema_fast/eval/finetune.py (FinetuneConfig).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULTS = {"epochs": 50, "batch_size": 32, "lr": 1e-3, "layer_decay": 0.75, "patience": 8}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="a crema-fast store (path or URL) with labels")
    init = parser.add_mutually_exclusive_group()
    init.add_argument("--ckpt", help="a pretraining checkpoint (a .pt file or a run folder: its latest)")
    init.add_argument("--from-scratch", action="store_true", help="a randomly initialised encoder of --preset")
    parser.add_argument("--preset", choices=("tiny", "small", "base"),
                        help="the architecture for --from-scratch (default tiny); with --ckpt, the checkpoint "
                             "must be of this preset")
    add_task_arguments(parser)
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder (checkpoints, report)")
    parser.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR with its saved settings")
    add_finetune_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no line per epoch")


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    """The label set and split options shared with ``crema-fast evaluate``."""
    from crema_fast.eval.labels import LABEL_SETS  # no torch

    parser.add_argument("--labels", default="superdiagnostic", choices=LABEL_SETS,
                        help="label set (default superdiagnostic; csv with --labels-csv)")
    parser.add_argument("--labels-csv", help="a CSV of record_id,labels (with --labels csv)")
    parser.add_argument("--scp-statements", help="PTB-XL's scp_statements.csv (default: found beside the sources)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient-disjoint split (no folds)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test AUROC interval")


def add_finetune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, help=f"at most this many epochs (default {DEFAULTS['epochs']})")
    parser.add_argument("--batch-size", type=int, help=f"ECGs per step (default {DEFAULTS['batch_size']})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate of the top layer (default {DEFAULTS['lr']})")
    parser.add_argument("--layer-decay", type=float,
                        help="layer-wise LR decay (default 0.75 from a checkpoint, 1.0 from scratch)")
    parser.add_argument("--patience", type=int,
                        help=f"epochs without a validation gain before stopping (default {DEFAULTS['patience']})")
    parser.add_argument("--seed", type=int, default=0, help="weights of the head, row order, crops (default 0)")
    parser.add_argument("--attention", choices=("ref", "sdpa", "triton"), default="sdpa",
                        help="attention implementation (default sdpa)")


def finetune_config(args: argparse.Namespace, *, scratch: bool):
    """FinetuneConfig from the options given; unset ones keep their defaults (layer_decay 1 from scratch)."""
    from crema_fast.eval.finetune import FinetuneConfig

    fields = {name: getattr(args, name) for name in DEFAULTS if getattr(args, name, None) is not None}
    if scratch and args.layer_decay is None:
        fields["layer_decay"] = 1.0
    return FinetuneConfig(**fields, seed=args.seed, attention=args.attention)


def check_preset(encoder, preset: str) -> None:
    """CremaError naming the fields on which the checkpoint's architecture differs from ``preset``'s."""
    from crema_fast.errors import CremaError
    from crema_fast.train.config import arch_mismatch, build_config

    diff = arch_mismatch(encoder.model, build_config(preset).model)
    if diff:
        raise CremaError(f"--ckpt {encoder.source} is not a {preset!r} model (checkpoint vs preset): " + "; ".join(diff))


def run(args: argparse.Namespace) -> int:
    from crema_fast.errors import CremaError
    from crema_fast.eval.baselines import Task, finetune_task
    from crema_fast.eval.finetune import encoder_of_run, pretrained_encoder, scratch_encoder
    from crema_fast.eval.report import format_table, write_report
    from crema_fast.train.checkpoint import list_checkpoints, read_checkpoint

    out = Path(args.out)
    if args.resume:
        if not list_checkpoints(out):
            raise CremaError(f"--resume: no checkpoint in {out / 'checkpoints'}")
        encoder = encoder_of_run(read_checkpoint(out))
        given = [f"--{n.replace('_', '-')}" for n in DEFAULTS if getattr(args, n, None) is not None]
        if given:  # the schedule and early stopping are the saved run's: another --epochs would change both
            print(f"note: --resume continues with the saved settings; ignoring {' '.join(given)}", file=sys.stderr)
    else:
        if list_checkpoints(out):
            raise FileExistsError(f"--out {out} already holds a fine-tuning run: add --resume, or name another --out")
        if not args.ckpt and not args.from_scratch:
            raise CremaError("finetune: expected --ckpt CKPT or --from-scratch (or --resume)")
        encoder = scratch_encoder(args.preset or "tiny") if args.from_scratch else pretrained_encoder(args.ckpt)
        if args.ckpt and args.preset:
            check_preset(encoder, args.preset)
    task = Task.from_store(args.store, args.labels, csv=args.labels_csv, scp_statements=args.scp_statements,
                           seed=args.split_seed)
    cfg = finetune_config(args, scratch=encoder.state is None)
    result = finetune_task(task, encoder, cfg, out, resume=args.resume, n_boot=args.n_boot,
                           progress=not args.no_progress)
    report = result["report"]
    paths = write_report(out, report, y_true=result["y_test"], scores=result["scores_test"])
    ft = report["finetune"]
    print(f"fine-tuned {ft['epochs_run']} epochs, best epoch {ft['best_epoch']} "
          f"(validation macro AUROC {ft['best_val_macro_auroc']:.3f})")
    print(format_table(report))
    print(f"report: {paths['json']}" + (f", ROC curves: {paths['roc']}" if "roc" in paths else ""))
    return 0
