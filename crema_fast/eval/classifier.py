"""The fine-tuning model and its plumbing: ``Classifier`` (SiT encoder + linear head), the layer-wise
learning-rate decay groups, store rows -> model inputs through the data pipeline, scoring.

Layer-wise learning-rate decay (BEiT / MAE fine-tuning): with encoder depth L, the layer id is l = 0 for
the patch embedding, lead embeddings and separator token, l = i + 1 for block i, l = L + 1 for the final
norm and the head; parameter group l runs at ``lr * layer_decay ** (L + 1 - l)``. Weight decay applies to
matrices only (pretraining's rule, ``engine.param_groups``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from crema_fast.data.config import DataConfig
from crema_fast.data.preprocess import preprocess
from crema_fast.model.config import ModelConfig
from crema_fast.model.sit import SiT


class Classifier(nn.Module):
    """SiT encoder + a linear head. forward(signal (B, 12, C), lead_mask bool (B, 12)) -> logits (B, n_classes)."""

    def __init__(self, model_cfg: ModelConfig, n_classes: int, attention: str = "sdpa"):
        super().__init__()
        self.sit = SiT(model_cfg, attention)
        self.head = nn.Linear(model_cfg.dim, n_classes)
        # MAE's fine-tuning head: tiny weights, so the first steps do not tear up the pretrained features.
        nn.init.trunc_normal_(self.head.weight, std=2e-5)
        nn.init.zeros_(self.head.bias)
        for name, p in self.sit.named_parameters():
            if not is_encoder(name):
                p.requires_grad_(False)

    def forward(self, signal: torch.Tensor, lead_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.sit.encode(signal, lead_mask))


def is_encoder(name: str) -> bool:
    """Whether a SiT parameter (name without the ``sit.`` prefix) belongs to the encoder."""
    return name.startswith(("patch_embed.", "lead_embed", "sep_token", "blocks.", "norm."))


def layer_id(name: str, depth: int) -> int:
    """The LLRD layer of a Classifier parameter: 0 embeddings, i + 1 block i, depth + 1 norm and head."""
    if name.startswith("sit.blocks."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("sit.norm.", "head.")):
        return depth + 1
    return 0


def llrd_groups(model: Classifier, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    """AdamW groups: one per (layer, decayed or not), at lr * layer_decay ** (depth + 1 - layer)."""
    depth = model.sit.cfg.depth
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid, decay = layer_id(name, depth), p.dim() >= 2
        g = groups.setdefault((lid, decay), {"params": [], "layer": lid,
                                             "lr": lr * layer_decay ** (depth + 1 - lid),
                                             "weight_decay": weight_decay if decay else 0.0})
        g["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def batch_tensors(reader, rows: np.ndarray, data_cfg: DataConfig, rng: np.random.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Store rows -> (signal float32 (B, 12, crop), lead_mask bool (B, 12)) through the data pipeline;
    a random crop from ``rng``, or the centre crop when ``rng`` is None."""
    rb = reader.read(np.asarray(rows, np.int64))
    x = preprocess(rb.signals, rb.lead_mask, rb.valid_length, reader.rate, data_cfg, rng=rng, train=rng is not None)
    return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(rb.lead_mask))


def amp_dtype(amp: str, device: torch.device):
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@torch.no_grad()
def predict(model: Classifier, reader, rows: np.ndarray, data_cfg: DataConfig, *, batch: int = 128,
            amp: str = "auto") -> np.ndarray:
    """Sigmoid scores float32 (N, C) of store ``rows`` (centre crops), in the order given."""
    device = next(model.parameters()).device
    dtype = amp_dtype(amp, device)
    was_training = model.training
    model.eval()
    out = []
    for k in range(0, len(rows), batch):
        x, lm = batch_tensors(reader, rows[k:k + batch], data_cfg, None)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            logits = model(x.to(device), lm.to(device))
        out.append(torch.sigmoid(logits.float()).cpu().numpy())
    model.train(was_training)
    n_classes = model.head.out_features
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)


def check_targets(name: str, y: np.ndarray, rows: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """y as float32 (N, C) matching rows (N,); for validation every class needs both values."""
    y = np.asarray(y, np.float32)
    if y.ndim != 2 or y.shape[0] != len(rows) or (n_classes is not None and y.shape[1] != n_classes):
        want = f"({len(rows)}, {n_classes if n_classes is not None else 'C'})"
        raise ValueError(f"{name}: expected targets of shape {want} matching its rows, got {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{name}: expected 0/1 multi-label targets, got values {np.unique(y)[:5]}")
    return y
