"""Frozen-encoder embeddings of every row of a store, and their Zarr file.

    enc = load_encoder("runs/tiny-.../checkpoints/step_0002000.pt")      # or random_init=True
    ids, emb = embed_rows(enc, "ptbxl.zarr")                              # str (N,), float32 (N, dim)
    write_embeddings("ptbxl.emb.zarr", ids, emb, embedding_meta(enc, "ptbxl.zarr"))

Rows go through the project's own data path: ``ECGLoader(train=False)`` reads them in store order
with the checkpoint's preprocessing (resampling, band-pass, z-score) and a fixed centre crop; the
loader's masks are ignored, ``CremaModel.encode`` sees every patch and mean-pools the patch tokens of
present leads (the pooling of the contrastive term in pretraining). On CUDA the encoder runs under
bf16 autocast (as pretraining's ``amp="auto"``); embeddings are float32 either way.

``--random-init`` is the baseline: the same architecture and preprocessing, untrained weights (seeded).
Attention defaults to "sdpa" (PyTorch's fused path, any device); "ref" and "triton" on request.

The Zarr file is a group: ``embeddings`` float32 (N, D), ``record_id`` str (N,), ``row`` int64 (N,)
store rows, and attributes {"kind": "crema-fast embeddings", "format": 1, ...meta}.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crema_fast.eval.errors import CheckpointMismatchError, EvalError

KIND = "crema-fast embeddings"
FORMAT = 1


@dataclass(frozen=True)
class Encoder:
    """A frozen model and what it is: model (CremaModel, eval mode, on ``device``), cfg (RunConfig: its
    data section is the preprocessing), meta (checkpoint, step, random_init, attention, preset)."""

    model: object
    cfg: object
    meta: dict


@dataclass(frozen=True)
class Embeddings:
    """An embeddings file: record_ids str (N,), emb float32 (N, D), rows int64 (N,), meta (its attributes)."""

    record_ids: np.ndarray
    emb: np.ndarray
    rows: np.ndarray
    meta: dict


def _device(device):
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_encoder(ckpt: str | os.PathLike | None, *, preset: str | None = None, random_init: bool = False,
                 attention: str | None = None, seed: int = 0, device=None) -> Encoder:
    """The encoder of checkpoint ``ckpt`` (a file or a run folder), or an untrained one (``random_init``)
    of the checkpoint's architecture or of ``preset``. A checkpoint whose architecture differs from
    ``preset``'s is a CheckpointMismatchError naming the fields."""
    import torch

    from crema_fast.model import CremaModel
    from crema_fast.train.checkpoint import load_model_state, read_checkpoint
    from crema_fast.train.config import PRESETS, RunConfig, arch_mismatch, build_config

    if preset is not None and preset not in PRESETS:
        raise EvalError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    meta = {"checkpoint": None, "step": None, "random_init": bool(random_init), "preset": preset, "seed": int(seed)}
    if ckpt is not None:
        saved = read_checkpoint(ckpt)
        cfg = RunConfig.from_dict(saved["config"])
        if preset is not None:
            diff = arch_mismatch(cfg.model, build_config(preset).model)
            if diff:
                raise CheckpointMismatchError(f"{saved['path']} is not a {preset!r} model (checkpoint vs preset): "
                                              + "; ".join(diff))
        meta.update(checkpoint=saved["path"], step=int(saved.get("step", 0)))
    elif preset is not None:
        cfg, saved = build_config(preset), None
    else:
        raise EvalError("embed: expected a checkpoint (--ckpt) or --random-init with --preset, got neither")
    if ckpt is None and not random_init:
        raise EvalError("embed: without --ckpt the encoder is untrained: pass --random-init to say so")
    attention = attention or "sdpa"
    torch.manual_seed(seed)  # the random-init baseline is reproducible
    model = CremaModel(cfg.model, cfg.loss, attention=attention)
    if saved is not None and not random_init:
        load_model_state(model, saved, cfg)
    model.eval().requires_grad_(False)
    model.to(_device(device))
    meta.update(attention=attention, model=dataclasses.asdict(cfg.model), data=dataclasses.asdict(cfg.data))
    return Encoder(model=model, cfg=cfg, meta=meta)


def embed_rows(encoder: Encoder, store, *, batch_size: int = 256, progress: bool = True,
               workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every row of ``store`` (path, URL or StoreReader) in store order:
    (record_ids str (N,), emb float32 (N, dim))."""
    import torch
    from tqdm.auto import tqdm

    from crema_fast.data.loader import ECGLoader
    from zarr_store.reader import StoreReader

    if not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f"batch_size: expected an int >= 1, got {batch_size!r}")
    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    n = len(reader)
    if n == 0:
        raise EvalError(f"store {reader.store} has no rows to embed")
    model, cfg = encoder.model, encoder.cfg
    device = next(model.parameters()).device
    loader = ECGLoader(reader, cfg.data, cfg.mask, batch_size, train=False, drop_last=False, workers=workers,
                       pin=device.type == "cuda")
    amp = cfg.amp_dtype(device.type) if device.type == "cuda" else None
    out = np.empty((n, cfg.model.dim), dtype=np.float32)
    done = np.zeros(n, dtype=bool)
    try:
        with tqdm(total=n, unit="ECG", desc="embed", disable=not progress) as bar, torch.inference_mode():
            for batch in loader:
                signal = batch.signal.to(device, non_blocking=True)
                lead_mask = batch.lead_mask.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                    z = model.encode(signal, lead_mask)
                rows = batch.index.numpy()
                out[rows] = z.float().cpu().numpy()
                done[rows] = True
                bar.update(len(rows))
    finally:
        loader.close()  # its worker processes, if any
    assert done.all(), "the evaluation loader covers every row once"
    ids = reader.column("record_id").astype(str) if reader.has_column("record_id") else \
        np.array([str(i) for i in range(n)])
    return ids, out


def embed_store(store, ckpt: str | os.PathLike | None, *, preset: str | None = None, random_init: bool = False,
                batch_size: int = 256, device=None, attention: str | None = None, progress: bool = True,
                seed: int = 0, workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``load_encoder`` then ``embed_rows``: (record_ids str (N,), emb float32 (N, dim))."""
    enc = load_encoder(ckpt, preset=preset, random_init=random_init, attention=attention, seed=seed, device=device)
    return embed_rows(enc, store, batch_size=batch_size, progress=progress, workers=workers)


def embedding_meta(encoder: Encoder, store) -> dict:
    """What an embeddings file records: the encoder's meta plus the store and its row count."""
    from zarr_store.reader import StoreReader

    reader = store if isinstance(store, StoreReader) else StoreReader(store)
    return {**encoder.meta, "store": reader.store, "store_rows": len(reader)}


def write_embeddings(out: str | os.PathLike, ids, emb, meta: dict | None = None, *, overwrite: bool = False) -> str:
    """Write ids str (N,) and emb float32 (N, D) (row i = store row i) as a Zarr group at ``out``."""
    import zarr

    emb = np.asarray(emb, dtype=np.float32)
    ids = np.asarray(ids).astype(str)
    if emb.ndim != 2 or ids.shape != (emb.shape[0],):
        raise EvalError(f"write_embeddings: expected ids (N,) and emb (N, D), got {ids.shape} and {emb.shape}")
    out = str(out)
    if "://" not in out and Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    group = zarr.open_group(out, mode="w")
    rows = max(1, min(len(emb), 4096))
    group.create_array("embeddings", shape=emb.shape, dtype="float32", chunks=(rows, emb.shape[1]))[...] = emb
    group.create_array("record_id", shape=ids.shape, dtype=str, chunks=(rows,))[...] = ids
    group.create_array("row", shape=ids.shape, dtype="int64", chunks=(rows,))[...] = np.arange(len(ids))
    group.attrs.update({"kind": KIND, "format": FORMAT, **_jsonable(meta or {})})
    return out


def _jsonable(d: dict) -> dict:
    import json

    return json.loads(json.dumps(d, default=str))


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    """An embeddings file written by ``write_embeddings``; EvalError when ``path`` is not one."""
    import zarr

    path = str(path)
    if "://" not in path and not Path(path).exists():
        raise FileNotFoundError(f"embeddings not found: {path}")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # not a Zarr group at all
        raise EvalError(f"{path}: not a crema-fast embeddings file ({exc})") from None
    attrs = dict(group.attrs)
    if attrs.get("kind") != KIND or not {"embeddings", "record_id"} <= set(group.array_keys()):
        raise EvalError(f"{path}: expected a {KIND!r} Zarr group (crema-fast embed --out), got kind "
                        f"{attrs.get('kind')!r} with arrays {sorted(group.array_keys())}")
    emb = group["embeddings"][...]
    ids = group["record_id"][...].astype(object).astype(str)  # zarr hands back numpy StringDType
    rows = group["row"][...] if "row" in group.array_keys() else np.arange(len(ids), dtype=np.int64)
    return Embeddings(record_ids=ids, emb=emb, rows=rows.astype(np.int64), meta=attrs)
