"""``crema-fast evaluate STORE --ckpt CKPT --baselines``: measure what pretraining bought.

    crema-fast evaluate ptbxl.zarr --ckpt runs/tiny-x --labels superdiagnostic --baselines --out reports/x
    crema-fast evaluate ptbxl.zarr --ckpt runs/tiny-x --baselines --finetune --epochs 30 --out reports/x

On one label set and one split (PTB-XL strat_fold, else patient-disjoint), in one command:
  pretrained_probe     linear probe on the checkpoint's frozen embeddings (always)
  random_init_probe    the same probe on an untrained encoder of the same architecture (--baselines)
  scratch_supervised   that encoder trained end to end on the labels, plain AdamW (--baselines)
  pretrained_finetune  the checkpoint's encoder fine-tuned with layer-wise LR decay (--finetune)
Each method's report (JSON, ROC PNG) goes to OUT/<method>/, the summary to OUT/comparison.json, and the
table with every macro AUROC and its bootstrap 95% interval is printed. ``--resume`` continues the
fine-tuning runs already in OUT (the probes are quick and run again). See crema_fast/eval/baselines.py.
"""

from __future__ import annotations

import argparse

from crema_fast.commands.finetune import add_finetune_arguments, add_task_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="a crema-fast store (path or URL) with labels")
    parser.add_argument("--ckpt", required=True, help="a pretraining checkpoint (a .pt file or a run folder)")
    parser.add_argument("--baselines", action="store_true",
                        help="also the random-init probe and the from-scratch supervised encoder")
    parser.add_argument("--finetune", action="store_true", help="also fine-tune the pretrained encoder")
    add_task_arguments(parser)
    parser.add_argument("--out", required=True, metavar="OUT_DIR", help="reports of every method and comparison.json")
    parser.add_argument("--resume", action="store_true", help="continue the fine-tuning runs already in OUT_DIR")
    add_finetune_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars or epoch lines")


def run(args: argparse.Namespace) -> int:
    from crema_fast.commands.finetune import finetune_config
    from crema_fast.eval.baselines import Task, compare, format_comparison

    task = Task.from_store(args.store, args.labels, csv=args.labels_csv, scp_statements=args.scp_statements,
                           seed=args.split_seed)
    d = task.describe()
    print(f"{d['label_set']} ({', '.join(d['classes'])}), {d['split']}: "
          f"{d['n']['train']} train / {d['n']['val']} val / {d['n']['test']} test rows")
    rows = compare(task, args.ckpt, args.out, baselines=args.baselines, finetune=args.finetune,
                   finetune_cfg=finetune_config(args, scratch=False), attention=args.attention, seed=args.seed,
                   n_boot=args.n_boot, resume=args.resume, progress=not args.no_progress)
    print(format_comparison(rows))
    print(f"reports in {args.out}; summary {args.out}/comparison.json")
    return 0
