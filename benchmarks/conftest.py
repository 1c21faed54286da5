"""Benchmarks are programs run by ``pytest benchmarks/ --benchmark-only``; the default test run skips them."""

import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
