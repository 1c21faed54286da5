"""Configuration of the data path: preprocessing (``DataConfig``) and patch masking (``MaskConfig``).

Both are frozen dataclasses validated at construction; every derived value (number of patches, patches kept
per lead) is computed here and nowhere else. Each field's meaning is the string under it: the config
reference (``crema-fast pretrain --print-config``, the README) is generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass

from crema_fast.errors import ConfigError

_ZSCORE = ("record", "lead")
_MASK_MODES = ("lead", "time", "block")
_PRECISIONS = ("float32", "float64")


@dataclass(frozen=True)
class DataConfig:
    """Online preprocessing, applied per batch in this order (ST-MEM's): resample the store's rate to
    ``model_rate``, zero-phase Butterworth band-pass (``highpass``-``lowpass`` Hz, ``filter_order`` each,
    plus an optional ``notch`` at 50 or 60 Hz) at the model rate, crop ``crop`` samples, z-score.
    """

    model_rate: int = 250
    """Hz of the model's input; the store's rows are resampled to it (skipped when equal)."""
    highpass: float | None = 0.67
    """High-pass cut-off in Hz (null = no high-pass)."""
    lowpass: float | None = 40.0
    """Low-pass cut-off in Hz (null = no low-pass)."""
    filter_order: int = 5
    """Butterworth order of each side of the band-pass (applied forward and backward: zero phase)."""
    notch: float | None = None
    """Power-line notch: null (off), 50 or 60 Hz."""
    notch_q: float = 30.0
    """Quality factor of the notch."""
    crop: int = 2250
    """Samples per lead at the model rate (2250 = 9 s at 250 Hz); a multiple of mask.patch."""
    zscore: str = "record"
    """"record": one mean and std over the present leads of a record; "lead": per lead."""
    precision: str = "float32"
    """The IIR filter's state and arithmetic (the signal is float32 either way): "float32" (about scipy's
    own float32 sosfiltfilt error, under 0.1 µV on PTB-XL, a tenth of the store's 1 µV step) or
    "float64" (scipy's float64 result rounded to float32; filtering ~1.7x slower, preprocessing ~1.2x)."""

    def __post_init__(self) -> None:
        if not isinstance(self.model_rate, int) or self.model_rate <= 0:
            raise ConfigError(f"DataConfig.model_rate: expected a positive int (Hz), got {self.model_rate!r}")
        nyq = self.model_rate / 2
        for name in ("highpass", "lowpass"):
            v = getattr(self, name)
            if v is not None and not 0 < v < nyq:
                raise ConfigError(f"DataConfig.{name}: expected None or a cut-off in (0, {nyq}) Hz, got {v!r}")
        if self.highpass is not None and self.lowpass is not None and self.highpass >= self.lowpass:
            raise ConfigError(f"DataConfig: expected highpass < lowpass, got {self.highpass} >= {self.lowpass}")
        if not isinstance(self.filter_order, int) or not 1 <= self.filter_order <= 10:
            raise ConfigError(f"DataConfig.filter_order: expected an int in [1, 10], got {self.filter_order!r}")
        if self.notch is not None and self.notch not in (50, 60):
            raise ConfigError(f"DataConfig.notch: expected None, 50 or 60 (Hz), got {self.notch!r}")
        if self.notch is not None and self.notch >= nyq:
            raise ConfigError(f"DataConfig.notch: {self.notch} Hz is above the Nyquist rate {nyq} Hz")
        if not self.notch_q > 0:
            raise ConfigError(f"DataConfig.notch_q: expected > 0, got {self.notch_q!r}")
        if not isinstance(self.crop, int) or self.crop <= 0:
            raise ConfigError(f"DataConfig.crop: expected a positive int (samples), got {self.crop!r}")
        if self.zscore not in _ZSCORE:
            raise ConfigError(f"DataConfig.zscore: expected one of {_ZSCORE}, got {self.zscore!r}")
        if self.precision not in _PRECISIONS:
            raise ConfigError(f"DataConfig.precision: expected one of {_PRECISIONS}, got {self.precision!r}")


@dataclass(frozen=True)
class MaskConfig:
    """Patch masking of each lead's ``crop`` samples cut into P patches of ``patch`` samples, of which
    K = P - round(ratio * P) are kept (Python's round)."""

    ratio: float = 0.75
    """Fraction of each lead's patches removed."""
    patch: int = 75
    """Samples per patch at the model rate (the model's patch follows it)."""
    mode: str = "lead"
    """"lead": each lead keeps K patches at independent random positions; "time": the same K positions
    for all leads of a record; "block": each lead's removed patches form one contiguous block at a
    uniform random start."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"MaskConfig.ratio: expected a fraction in [0, 1), got {self.ratio!r}")
        if not isinstance(self.patch, int) or self.patch <= 0:
            raise ConfigError(f"MaskConfig.patch: expected a positive int (samples), got {self.patch!r}")
        if self.mode not in _MASK_MODES:
            raise ConfigError(f"MaskConfig.mode: expected one of {_MASK_MODES}, got {self.mode!r}")

    def n_patches(self, crop: int) -> int:
        """P = crop // patch; ``crop`` must be a positive multiple of ``patch``."""
        if crop <= 0 or crop % self.patch:
            raise ConfigError(f"crop: expected a positive multiple of MaskConfig.patch={self.patch}, got {crop}")
        return crop // self.patch

    def n_keep(self, n_patches: int) -> int:
        """K = P - round(ratio * P) patches kept per lead; at least one must stay visible."""
        if n_patches <= 0:
            raise ConfigError(f"n_patches: expected > 0, got {n_patches}")
        k = n_patches - round(self.ratio * n_patches)
        if k < 1:
            raise ConfigError(
                f"MaskConfig.ratio={self.ratio} leaves no visible patch of {n_patches}: expected a smaller ratio "
                f"or a longer crop")
        return k
