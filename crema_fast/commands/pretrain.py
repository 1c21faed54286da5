"""``crema-fast pretrain``: pretrain a SiT with the CR-MAE loss.

With no arguments it is the demo: the 15 PTB-XL records shipped in ``crema_fast/demo_data`` are
converted into a store under ``runs/stores/`` (once; later runs reuse it), the ``demo`` preset (tiny
model) trains for a few minutes on a laptop CPU, and a summary says where the checkpoint and plots are.

    crema-fast pretrain                                   # the demo
    crema-fast pretrain --data ../shared/data/ptbxl       # a folder of WFDB records (converted once)
    crema-fast pretrain --data my.zarr --preset small     # an existing store
    crema-fast pretrain --set train.steps=500 optim.lr=1e-3 --config run.toml
    crema-fast pretrain --resume runs/demo-20260101-120000 --steps 400   # re-stretches the LR schedule
    crema-fast pretrain --dry-run --preset base           # the config, parameter counts and preset, then exit
    crema-fast pretrain --print-config                    # every config field: default and meaning
    torchrun --nproc_per_node 8 -m crema_fast.cli pretrain --data store.zarr --preset base

The default preset is ``demo`` without ``--data`` and ``tiny`` with it. Precedence: the preset, then
``--config``, then ``--steps``/``--attention``/``--loss``/``--data``, then ``--set``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crema_fast.commands._data import resolve_store
from crema_fast.errors import CremaError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="a store (path or URL) or a folder of WFDB records to convert "
                                       "(default: the shipped demo records)")
    parser.add_argument("--preset", choices=("demo", "tiny", "small", "base"),
                        help="named configuration (default: demo without --data, tiny with it)")
    parser.add_argument("--steps", type=int, help="optimizer steps (train.steps)")
    parser.add_argument("--out", help="the run folder (default: <train.out>/<preset>-<date>-<time>)")
    parser.add_argument("--attention", choices=("ref", "sdpa", "triton"), help="attention implementation")
    parser.add_argument("--loss", choices=("ref", "triton"), help="CR-MAE loss implementation (triton: the fused kernels)")
    parser.add_argument("--set", dest="sets", nargs="+", action="extend", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override config fields, e.g. --set train.steps=200 optim.lr=1e-3")
    parser.add_argument("--config", help="a JSON or TOML file of config sections (and an optional 'preset')")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR from its last checkpoint, with the same number of "
                             "processes; the LR schedule keeps its saved length, except that a different "
                             "--steps (or train.steps) re-stretches the cosine from the resumed step to the new "
                             "total: a warm restart, the LR goes back up (a line says so)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the config, parameter counts and the preset used, then exit")
    parser.add_argument("--print-config", action="store_true",
                        help="print every config field with its default and meaning (Markdown), then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def param_counts(model) -> dict[str, int]:
    """Parameters of the encoder (patch embedding, tokens, blocks), the decoder, the projection head."""
    counts = {"encoder": 0, "decoder": 0, "head": 0}
    for name, p in model.named_parameters():
        if name.startswith("proj."):
            counts["head"] += p.numel()
        elif name.startswith(("sit.dec", "sit.mask_token")):
            counts["decoder"] += p.numel()
        else:
            counts["encoder"] += p.numel()
    counts["total"] = sum(counts.values())
    return counts


def _build(args) -> tuple:
    """(config, checkpoint or None, preset name, where the preset came from)."""
    from crema_fast.train.checkpoint import read_checkpoint
    from crema_fast.train.config import RunConfig, build_config

    train: dict = {}
    if args.steps is not None:
        train["steps"] = args.steps
    if args.attention:
        train["attention"] = args.attention
    if args.loss:
        train["loss"] = args.loss
    if args.data:
        train["data"] = args.data
    if args.resume:
        if args.preset:
            raise CremaError("--preset: a resumed run keeps its own configuration (use --set to change fields)")
        ckpt = read_checkpoint(args.resume)
        base = RunConfig.from_dict(ckpt["config"])
        cfg = build_config(base=base, file=args.config, sets=args.sets, overrides={"train": train})
        return cfg, ckpt, "resume", f"the saved config of {args.resume}"
    from crema_fast.train.config import read_config_file

    from_file = read_config_file(args.config).get("preset") if args.config else None
    preset = args.preset or from_file or ("tiny" if args.data else "demo")
    why = ("--preset" if args.preset else f"--config {args.config}" if from_file
           else "the default with --data" if args.data else "the default without --data")
    cfg = build_config(preset, file=args.config, sets=args.sets, overrides={"train": train})
    return cfg, None, preset, why


def dry_run(cfg, preset: str, why: str) -> int:
    import torch

    from crema_fast.train.engine import build_model

    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg)
    print(json.dumps(cfg.to_dict(), indent=2))
    counts = param_counts(model)
    print("parameters:")
    for k, v in counts.items():
        print(f"  {k:<8} {v:>12,}")
    flops = model.flops_per_ecg(cfg.mask.n_keep(cfg.model.n_patches))
    print(f"forward GFLOP per ECG (both views): {flops / 1e9:.3f}; micro-batch per rank (1 process): "
          f"{cfg.micro_batch(1)}")
    from crema_fast.train.memory import report

    for line in report(cfg, model.num_params()):
        print(line)
    print(f"preset: {preset} ({why})")
    return 0


def _run_dir(args, cfg, preset: str, rank: int, world: int) -> Path:
    if args.resume:
        return Path(args.resume)
    name = [args.out or str(Path(cfg.train.out) / f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}")]
    if world > 1:  # one name for all ranks: rank 0's clock
        import torch.distributed as dist

        dist.broadcast_object_list(name, src=0)
    run_dir = Path(name[0])
    if rank == 0 and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()):
        raise CremaError(f"--out: {run_dir} already holds a run; continue it with --resume {run_dir} "
                         "or name another folder")
    return run_dir


def print_summary(summary, metrics: list[dict], started: float, how: str, store: str) -> None:
    first = metrics[0] if metrics else {}
    print(f"\ncrema-fast pretrain: done in {time.perf_counter() - started:.1f} s")
    print(f"  data        {store} ({how})")
    print(f"  steps       {summary.steps} (this run: {summary.start_step} -> {summary.steps}, "
          f"{summary.seconds:.1f} s of training)")
    if first:
        print(f"  loss        {first['loss']:.4f} (step {first['step']}) -> {summary.loss:.4f} "
              f"(step {summary.steps})")
    print(f"  final terms mse {summary.mse:.4f}, nt-xent {summary.nce:.4f}")
    print(f"  throughput  {summary.ecg_per_s:.1f} ECG/s")
    print(f"  checkpoint  {summary.checkpoint}")
    for p in summary.plots:
        print(f"  plot        {p}")
    print(f"  metrics     {summary.metrics}")
    print(f"  continue    crema-fast pretrain --resume {summary.run_dir} --steps {2 * summary.steps}")


def run(args) -> int:
    started = time.perf_counter()
    if args.print_config:
        from crema_fast.train.config_doc import reference

        print(reference(), end="")
        return 0
    cfg, ckpt, preset, why = _build(args)
    if args.dry_run:
        return dry_run(cfg, preset, why)
    from crema_fast.train.engine import Trainer, check_resume_world, setup_distributed
    from crema_fast.train.plots import read_metrics

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():  # before any conversion
        raise CremaError(f"--out: expected a run folder (new, or one to write into), got the file {args.out}")
    rank, world, _ = setup_distributed()
    if ckpt is not None:
        check_resume_world(ckpt, world)  # before any conversion or model building
    data = args.data or (ckpt.get("store") if ckpt else None) or cfg.train.data
    if world > 1:
        import torch.distributed as dist

        if rank == 0:
            store, how = resolve_store(data, cfg.train.out)
        dist.barrier()  # rank 0 converts; the others then find the finished store
        if rank != 0:
            store, how = resolve_store(data, cfg.train.out)
    else:
        store, how = resolve_store(data, cfg.train.out)
    run_dir = _run_dir(args, cfg, preset, rank, world)
    if ckpt is not None and int(ckpt["step"]) >= cfg.train.steps:
        raise CremaError(f"--resume: {run_dir} is already at step {ckpt['step']} of train.steps={cfg.train.steps}; "
                         f"pass --steps N with N > {ckpt['step']} to train further")
    trainer = Trainer(cfg, run_dir, store, resume=ckpt, progress=not args.no_progress)
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
    if rank == 0:
        print_summary(summary, read_metrics(summary.metrics), started, how, store)
    return 0
