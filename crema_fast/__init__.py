"""crema-fast: pretraining CREMA-style ECG foundation models at scale."""

__version__ = "0.1.0"
