"""The one benchmark harness: device facts, peaks, timing summaries, and result rows.

Every benchmark appends JSON-lines rows to ``benchmarks/results/<name>.jsonl`` through ``record``;
each row carries the device, commit, versions and date so figures can be compared across runs.

Two environment variables, read here so that every benchmark means the same by them (``crema-fast bench``
sets them):
  CREMA_BENCH_QUICK=1      ``quick()`` is True: each benchmark runs smaller shapes, fewer records and
                           repeats (a pass of all of them in about a minute on a 2-core CPU); rows carry
                           ``quick: true``, so that their figures are never mistaken for a full run's
  CREMA_BENCH_RESULTS=DIR  ``record`` appends under DIR instead of benchmarks/results (tests use it)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import time
from pathlib import Path
from statistics import median

RESULTS = Path(__file__).resolve().parent / "results"

# Dense peak throughput by device name (TFLOP/s, no sparsity) and memory bandwidth (GB/s).
PEAKS = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "GB/s": 3350.0},
    "NVIDIA H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "GB/s": 3350.0},
    "NVIDIA H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "GB/s": 4800.0},
}


def quick() -> bool:
    """Whether this is a quick pass (CREMA_BENCH_QUICK set to anything but '', '0', 'false', 'no')."""
    return os.environ.get("CREMA_BENCH_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def results_dir() -> Path:
    """Where ``record`` appends: $CREMA_BENCH_RESULTS, else benchmarks/results."""
    env = os.environ.get("CREMA_BENCH_RESULTS")
    return Path(env) if env else RESULTS


def device_name() -> str:
    """The CUDA device's name, else the CPU model with the cores this process may use."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except ImportError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({len(os.sched_getaffinity(0))} cores)"


def peak(kind: str) -> float | None:
    """The device's peak for ``kind`` ('bf16', 'fp16', 'GB/s'), or None where unknown (CPUs)."""
    name = device_name()
    for key, table in PEAKS.items():
        if name.startswith(key):
            return table.get(kind)
    return None


def _commit() -> str:
    """The commit measured: CREMA_COMMIT where set (the device machine's copy of the tree carries a .git
    whose HEAD is not the tree's commit), else git's short hash (+dirty), else 'unknown'."""
    if os.environ.get("CREMA_COMMIT"):
        return os.environ["CREMA_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=RESULTS.parent, timeout=5)
        # The results this run appends to are not a change of the code measured.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                ":(top,exclude)benchmarks/results"], capture_output=True,
                               text=True, cwd=RESULTS.parent, timeout=5).stdout.strip()
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions() -> dict[str, str]:
    """Versions of the libraries a figure depends on (those importable here)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "triton", "numba", "numpy", "scipy", "zarr", "numcodecs", "zstandard", "wfdb"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def summarize(samples: list[float]) -> dict[str, float]:
    """Median and spread (min, max, interquartile range) of a list of timings or rates."""
    s = sorted(samples)
    q = lambda f: s[min(len(s) - 1, int(round(f * (len(s) - 1))))]  # noqa: E731
    return {"median": median(s), "min": s[0], "max": s[-1], "iqr": q(0.75) - q(0.25), "n": len(s)}


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, its finished children and its live ones (e.g.
    persistent DataLoader workers). Per-core rates are work per CPU-second: on a shared machine, time
    spent descheduled by other processes does not count (record wall-clock rates beside them)."""
    import resource

    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + done.ru_utime + done.ru_stime
    try:
        import psutil

        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                total += t.user + t.system
            except psutil.Error:  # exited meanwhile: counted in RUSAGE_CHILDREN once reaped
                pass
    except ImportError:
        pass
    return total


def time_call(fn, *, repeat: int = 5, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``fn()`` over ``repeat`` runs after ``warmup`` runs (CPU timings)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def record(bench: str, rows: list[dict] | dict) -> Path:
    """Append rows to ``<results_dir()>/<bench>.jsonl`` with device, commit, versions, date (and
    ``quick: true`` in a quick pass)."""
    rows = [rows] if isinstance(rows, dict) else rows
    out = results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{bench}.jsonl"
    stamp = {
        "device": device_name(),
        "commit": _commit(),
        "versions": versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if quick():
        stamp["quick"] = True
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps({**stamp, **row}, default=float) + "\n")
    return path


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned text table (benchmarks run with -s show it)."""
    cells = [[f"{r.get(c, ''):.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print(f"\n== {title}")
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths)))
