"""Run plots (matplotlib, Agg backend, PNG in the run folder): loss curves and one ECG's reconstruction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: no display needed, none opened
    import matplotlib.pyplot as plt

    return plt


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, in order."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(metrics: str | Path, out: str | Path) -> Path:
    """Total loss, masked MSE and NT-Xent against the step (one panel each; log scale where positive),
    with the learning rate on the first panel's second axis. Returns ``out``."""
    plt = _pyplot()
    rows = read_metrics(metrics)
    steps = np.array([r["step"] for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    for ax, key, title in zip(axes, ("loss", "mse", "nce"), ("total loss", "masked MSE", "NT-Xent")):
        vals = np.array([r[key] for r in rows], dtype=float)
        ax.plot(steps, vals, color="C0", lw=1.4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(vals) and np.all(vals[np.isfinite(vals)] > 0):
            ax.set_yscale("log")
    if rows:
        lr = axes[0].twinx()
        lr.plot(steps, [r["lr"] for r in rows], color="C1", lw=0.8, alpha=0.6)
        lr.set_ylabel("learning rate", color="C1")
    fig.suptitle(f"CR-MAE pretraining: {len(rows)} logged steps")
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


@torch.no_grad()
def reconstruct(model: torch.nn.Module, batch, view: int = 0) -> dict[str, np.ndarray]:
    """Run ``model`` (a CremaModel, unwrapped) on ``batch`` in eval mode and bring view ``view``'s
    prediction back to signal units: each masked patch's prediction times the original patch's
    sqrt(population variance + eps) plus its mean (the inverse of the loss's per-patch normalization).

    Returns numpy arrays: signal (B, 12, C), recon (B, 12, C) (NaN on visible patches), mask
    (B, 12, P) (1 = removed), lead_mask (B, 12), mse (B,): each ECG's masked MSE of view ``view`` in the
    normalized-target space (the loss's mse term for that ECG alone), and loss float (the batch's total)."""
    was_training = model.training
    model.eval()
    try:
        out = model(batch.signal, batch.ids_keep, batch.mask, batch.ids_restore, batch.lead_mask)
    finally:
        model.train(was_training)
    patches = model.patchify(batch.signal).float()  # (B, 12, P, S)
    pred = out.pred[view].float()
    if model.loss_cfg.norm_target:
        mean = patches.mean(dim=-1, keepdim=True)
        std = torch.sqrt(patches.var(dim=-1, keepdim=True, unbiased=False) + model.loss_cfg.eps)
        pred = pred * std + mean
    mask = batch.mask[view].float()  # (B, 12, P)
    m = mask * batch.lead_mask[..., None].float()  # removed patches of present leads
    err = (out.pred[view].float() - out.target.float()).pow(2).mean(dim=-1)  # (B, 12, P)
    mse = (err * m).sum(dim=(1, 2)) / m.sum(dim=(1, 2)).clamp_min(1.0)
    recon = torch.where(mask[..., None] > 0, pred, torch.full_like(pred, float("nan")))
    b, leads, p, s = recon.shape
    return {"signal": batch.signal.float().cpu().numpy(), "recon": recon.reshape(b, leads, p * s).cpu().numpy(),
            "mask": mask.cpu().numpy(), "lead_mask": batch.lead_mask.cpu().numpy(), "mse": mse.cpu().numpy(),
            "loss": float(out.loss)}


def plot_reconstruction(model: torch.nn.Module, batch, out: str | Path, *, index: int = 0, rate: float = 250.0,
                        view: int = 0, result: dict | None = None) -> Path:
    """ECG ``index`` of ``batch``: its 12 leads (6 x 2 panels), masked patches of view ``view`` shaded,
    and the model's reconstruction of them drawn over the original. ``rate``: Hz of the signal (the
    model rate) for the time axis; ``result``: ``reconstruct(model, batch, view)`` if already computed.
    Returns ``out``."""
    plt = _pyplot()
    r = reconstruct(model, batch, view) if result is None else result
    sig, rec, mask, present = r["signal"][index], r["recon"][index], r["mask"][index], r["lead_mask"][index]
    n_patches = mask.shape[-1]
    patch = sig.shape[-1] // n_patches
    t = np.arange(sig.shape[-1]) / rate
    fig, axes = plt.subplots(6, 2, figsize=(14, 11), sharex=True, constrained_layout=True)
    for lead in range(12):
        ax = axes[lead % 6, lead // 6]
        for p in np.flatnonzero(mask[lead] > 0):
            ax.axvspan(p * patch / rate, (p + 1) * patch / rate, color="0.88", lw=0)
        ax.plot(t, sig[lead], color="k", lw=0.7, label="original")
        ax.plot(t, rec[lead], color="C3", lw=0.9, label="reconstruction")
        name = LEADS[lead] if lead < len(LEADS) else str(lead)
        ax.set_ylabel(name if present[lead] else f"{name} (absent)", rotation=0, labelpad=18)
        ax.margins(x=0)
        ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    axes[0, 0].legend(loc="upper right", fontsize=7)
    fig.suptitle(f"masked patches (grey) and their reconstruction, view {view}: masked MSE of this ECG "
                 f"{r['mse'][index]:.4f} (per-patch normalized)")
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
