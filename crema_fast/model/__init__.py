"""The SiT model and the CR-MAE loss (see crema.py for the entry point)."""

from crema_fast.model.config import LossConfig, ModelConfig
from crema_fast.model.crema import CremaModel, CremaOutput
from crema_fast.model.sit import SiT, random_masking

__all__ = ["CremaModel", "CremaOutput", "LossConfig", "ModelConfig", "SiT", "random_masking"]
