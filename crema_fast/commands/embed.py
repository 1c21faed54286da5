"""``crema-fast embed STORE --ckpt CKPT --out EMB``: frozen-encoder embeddings of every row of a store.

    crema-fast embed ptbxl.zarr --ckpt runs/tiny-20260101-120000 --out ptbxl.emb.zarr
    crema-fast embed ptbxl.zarr --random-init --preset tiny --out random.emb.zarr   # the baseline
    crema-fast embed ptbxl.zarr --ckpt CKPT --random-init --out r.emb.zarr           # CKPT's architecture

The checkpoint's preprocessing (crema_fast.data, centre crop) and encoder (no masking, mean-pooled),
batched, on the GPU when there is one (crema_fast.eval.embed). The output is a Zarr group with the
embeddings (N, D), the record ids and the store rows; ``crema-fast probe EMB --store STORE`` reads it.
"""

from __future__ import annotations

import argparse
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("store", metavar="STORE", help="the store (path or fsspec URL)")
    parser.add_argument("--ckpt", metavar="CKPT", help="a checkpoint file or a run folder (its latest checkpoint)")
    parser.add_argument("--out", required=True, metavar="EMB", help="the embeddings to write (a Zarr group)")
    parser.add_argument("--random-init", action="store_true",
                        help="an untrained encoder of the checkpoint's architecture (or of --preset): the baseline")
    parser.add_argument("--preset", choices=("demo", "tiny", "small", "base"),
                        help="the architecture: checked against --ckpt, or built untrained with --random-init")
    parser.add_argument("--batch-size", type=int, default=256, help="ECGs per forward pass (default 256)")
    parser.add_argument("--attention", choices=("ref", "sdpa", "triton"), default=None,
                        help="attention implementation (default sdpa)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-init weights (default 0)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace EMB when it exists")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from zarr_store.reader import StoreReader

    from crema_fast.eval.embed import embed_rows, embedding_meta, load_encoder, write_embeddings

    if "://" not in args.out and Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} exists; pass --overwrite to replace it")
    reader = StoreReader(args.store)
    enc = load_encoder(args.ckpt, preset=args.preset, random_init=args.random_init, attention=args.attention,
                       seed=args.seed, device=args.device)
    t0 = time.perf_counter()
    ids, emb = embed_rows(enc, reader, batch_size=args.batch_size, progress=not args.no_progress,
                          workers=args.workers)
    seconds = time.perf_counter() - t0
    write_embeddings(args.out, ids, emb, {**embedding_meta(enc, reader), "seconds": round(seconds, 2)},
                     overwrite=args.overwrite)
    device = next(enc.model.parameters()).device
    what = enc.meta["checkpoint"] or f"random init ({args.preset or 'checkpoint'} architecture)"
    if enc.meta["checkpoint"] and args.random_init:
        what = f"random init, architecture of {enc.meta['checkpoint']}"
    print(f"embedded {len(ids)} rows -> {args.out}: {emb.shape[1]} dims, {what}, {device}, "
          f"{len(ids) / max(seconds, 1e-9):.0f} ECG/s")
    return 0
