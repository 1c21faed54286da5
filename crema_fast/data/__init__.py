"""The Numba data path: store -> resample -> band-pass (+ notch) -> crop -> z-score -> patch masks -> batches.

Public names: DataConfig, MaskConfig (config), make_masks / make_views (masking), Batch, ECGLoader (the
loader and Batch are imported lazily: they import torch and the store). The batch pipeline is
``crema_fast.data.preprocess.preprocess`` (not re-exported here, so that the name ``preprocess`` stays the
submodule).
"""

from crema_fast.data.config import DataConfig, MaskConfig
from crema_fast.data.masking import make_masks, make_views

__all__ = ["DataConfig", "MaskConfig", "make_masks", "make_views", "Batch", "ECGLoader"]


def __getattr__(name):
    if name == "ECGLoader":
        from crema_fast.data.loader import ECGLoader

        return ECGLoader
    if name == "Batch":
        from crema_fast.data.batch import Batch

        return Batch
    raise AttributeError(f"module 'crema_fast.data' has no attribute {name!r}")
