"""Patch masking for the masked autoencoder, MAE convention: ``mask`` 1 = removed, 0 = kept.

Each of the P patches of each lead is kept or removed; every lead keeps exactly K = P - round(ratio * P).
Outputs per (record, lead):
    ids_keep    int64 (B, L, K)  positions of the kept patches, ascending in time
    mask        float32 (B, L, P) 1 where a patch is removed
    ids_restore int64 (B, L, P)  position of each patch in the concatenation [kept (ascending), removed
                                 (ascending)], so that ``take_along_axis(concat, ids_restore)`` restores
                                 time order (MAE's unshuffle)
Modes: "lead" (independent positions per lead), "time" (the positions of lead 0 for all leads), "block"
(each lead loses one contiguous block of P - K patches at a uniform random start in [0, K]; the K kept
patches are those before and after it).

The draw is a partial Fisher-Yates shuffle in Numba over uniforms from a numpy Generator: K swaps per lead
instead of an argsort of P random keys (about 9x faster), every K-subset equally likely.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from crema_fast.data.config import MaskConfig

_MODES = {"lead": 0, "time": 1, "block": 2}


@nb.njit(cache=True)
def _masks(u, K, mode, ids_keep, mask, ids_restore):
    B, NL, P = mask.shape
    kept = np.zeros(P, np.bool_)
    perm = np.empty(P, np.int64)
    for b in range(B):
        for ld in range(NL):
            if mode == 1 and ld > 0:  # time-aligned: copy lead 0
                ids_keep[b, ld] = ids_keep[b, 0]
                mask[b, ld] = mask[b, 0]
                ids_restore[b, ld] = ids_restore[b, 0]
                continue
            kept[:] = False
            if mode == 2:  # one removed block of P - K patches, start uniform over [0, K]
                s0 = min(int(u[b, ld, 0] * (K + 1)), K)
                kept[:] = True
                for i in range(P - K):
                    kept[s0 + i] = False
            else:
                for i in range(P):
                    perm[i] = i
                for i in range(K):  # partial Fisher-Yates: perm[:K] is a uniform K-subset
                    j = i + min(int(u[b, ld, i] * (P - i)), P - i - 1)
                    tmp = perm[i]
                    perm[i] = perm[j]
                    perm[j] = tmp
                    kept[perm[i]] = True
            k = 0
            r = K
            for q in range(P):
                if kept[q]:
                    ids_keep[b, ld, k] = q
                    ids_restore[b, ld, q] = k
                    mask[b, ld, q] = 0.0
                    k += 1
                else:
                    ids_restore[b, ld, q] = r
                    mask[b, ld, q] = 1.0
                    r += 1


def _check(batch, n_leads, n_patches, cfg):
    for name, v in (("batch", batch), ("n_leads", n_leads), ("n_patches", n_patches)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name}: expected a non-negative int, got {v!r}")
    return int(batch), int(n_leads), int(n_patches), cfg.n_keep(int(n_patches))


def _as_rng(rng_or_seed) -> np.random.Generator:
    return rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)


def make_masks(rng_or_seed, batch: int, n_leads: int, n_patches: int, cfg: MaskConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One masked view: (ids_keep int64 (B, L, K), mask float32 (B, L, P), ids_restore int64 (B, L, P)).

    rng_or_seed: a numpy Generator (advanced by the draw) or an int seed. Raises ConfigError when the ratio
    leaves no patch visible. Call twice with the same Generator for two independent views.
    """
    B, NL, P, K = _check(batch, n_leads, n_patches, cfg)
    rng = _as_rng(rng_or_seed)
    u = rng.random((B, NL, K))
    ids_keep = np.empty((B, NL, K), np.int64)
    mask = np.empty((B, NL, P), np.float32)
    ids_restore = np.empty((B, NL, P), np.int64)
    if B and NL:
        _masks(u, K, _MODES[cfg.mode], ids_keep, mask, ids_restore)
    return ids_keep, mask, ids_restore


def make_views(rng_or_seed, batch: int, n_leads: int, n_patches: int, cfg: MaskConfig, views: int = 2, *,
               out: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``views`` independent views on a leading axis: (V, B, L, K), (V, B, L, P), (V, B, L, P); the same
    draws as ``views`` successive make_masks calls on one Generator. out: three C-contiguous arrays of
    those shapes and dtypes to fill (e.g. shared-memory tensors' numpy views)."""
    B, NL, P, K = _check(batch, n_leads, n_patches, cfg)
    rng = _as_rng(rng_or_seed)
    shapes = ((views, B, NL, K), (views, B, NL, P), (views, B, NL, P))
    dtypes = (np.int64, np.float32, np.int64)
    if out is None:
        out = tuple(np.empty(s, d) for s, d in zip(shapes, dtypes))
    for a, s, d, name in zip(out, shapes, dtypes, ("ids_keep", "mask", "ids_restore")):
        if a.shape != s or a.dtype != d or not a.flags.c_contiguous:
            raise ValueError(f"out ({name}): expected C-contiguous {np.dtype(d)} {s}, got {a.dtype} {a.shape}")
    ids_keep, mask, ids_restore = out
    for v in range(views):
        u = rng.random((B, NL, K))
        if B and NL:
            _masks(u, K, _MODES[cfg.mode], ids_keep[v], mask[v], ids_restore[v])
    return ids_keep, mask, ids_restore
