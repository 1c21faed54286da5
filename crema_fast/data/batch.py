"""The unit the loader yields: one batch of preprocessed, doubly masked ECGs as torch tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Batch:
    """B ECGs, C = crop samples at the model rate, P patches per lead, K kept per lead, two views.

    signal float32 (B, 12, C); ids_keep int64 (2, B, 12, K); mask float32 (2, B, 12, P) (1 = removed, the
    MAE convention); ids_restore int64 (2, B, 12, P); lead_mask bool (B, 12); index int64 (B,) store rows.
    View 0 and view 1 are independent masks of the same cropped signal.
    """

    signal: torch.Tensor
    ids_keep: torch.Tensor
    mask: torch.Tensor
    ids_restore: torch.Tensor
    lead_mask: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.signal.shape[0])

    def _map(self, fn) -> Batch:
        return Batch(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})

    def to(self, device, non_blocking: bool = True) -> Batch:
        """All tensors on ``device`` (non-blocking copies: pin first for overlap with compute)."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin(self) -> Batch:
        """All tensors in page-locked memory (a no-op copy-free return when CUDA is absent)."""
        if not torch.cuda.is_available():
            return self
        return self._map(lambda t: t.pin_memory())

    def pin_memory(self) -> Batch:  # the name torch's DataLoader pin thread calls
        return self.pin()

    def view(self, v: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids_keep, mask, ids_restore) of view ``v`` (0 or 1)."""
        return self.ids_keep[v], self.mask[v], self.ids_restore[v]
