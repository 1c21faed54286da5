"""``crema-fast bench [STAGE ...] [--quick] [--out REPORT_DIR]``: every benchmark this machine can run, then
one Markdown report with tables and PNG plots of this run's figures.

Stages (default: all, in this order): store, data, attention, loss, train, eval. Each runs its
pytest-benchmark program (``python -m pytest benchmarks/bench_<stage>.py --benchmark-only -s``) as a
subprocess from the repository root; each program picks its CPU or GPU variant itself (the CPU one times
the references and PyTorch's own kernels; the GPU one the Triton kernels and the base-preset training
step too). The rows they append to benchmarks/results/<bench>.jsonl (or $CREMA_BENCH_RESULTS) are read
back from where each file ended before the run, and ``benchmarks/report.py`` builds the report from
them: REPORT_DIR/report_<device>_<commit>.md beside its PNGs (default REPORT_DIR: the results folder).
``--quick`` sets CREMA_BENCH_QUICK=1 for the programs: smaller shapes and record counts, about a minute
in all on a 2-core CPU; its rows carry ``quick: true``.

The benchmarks live in a checkout of the repository, not in the wheel: without a benchmarks folder
(beside the installed package, or in the current directory) the command stops with a one-line error.
Exit status: 0 when every stage's program passed, 1 when one failed (the report is written anyway).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from crema_fast.errors import CremaError

# stage -> (program in benchmarks/, the results file its rows go to)
STAGES = {
    "store": ("bench_store.py", "store.jsonl"),
    "data": ("bench_data.py", "data.jsonl"),
    "attention": ("bench_attention.py", "attention.jsonl"),
    "loss": ("bench_crmae_loss.py", "crmae_loss.jsonl"),
    "train": ("bench_train.py", "train.jsonl"),
    "eval": ("bench_eval.py", "eval.jsonl"),
}


class BenchError(CremaError):
    """A bench invocation that cannot run (unknown stage, no benchmarks folder)."""


def add_arguments(parser) -> None:
    parser.add_argument("stages", nargs="*", metavar="STAGE",
                        help=f"stages to run (default: all): {', '.join(STAGES)}")
    parser.add_argument("--quick", action="store_true",
                        help="a quick pass: smaller shapes and record counts (CREMA_BENCH_QUICK=1), about a minute")
    parser.add_argument("--out", metavar="REPORT_DIR",
                        help="folder of the report and its PNGs (default: the results folder, benchmarks/results)")
    parser.add_argument("--pytest-args", default="", metavar="ARGS",
                        help="extra arguments for every benchmark's pytest run (one string, split like a shell)")


def parse_stages(names: list[str]) -> list[str]:
    """The stages to run, in the canonical order; commas also separate names. Unknown names raise BenchError."""
    wanted = [n.strip().lower() for name in names for n in name.split(",") if n.strip()]
    bad = [n for n in wanted if n not in STAGES]
    if bad:
        raise BenchError(f"unknown stage{'s' if len(bad) > 1 else ''} {', '.join(map(repr, bad))}: "
                         f"expected any of {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted] if wanted else list(STAGES)


def find_root() -> Path:
    """The repository root holding benchmarks/ (a checkout): beside the installed package, else the cwd."""
    here = Path(__file__).resolve().parents[2]
    candidates = [here, Path.cwd()]
    for root in candidates:
        if (root / "benchmarks" / "harness.py").is_file() and (root / "benchmarks" / "report.py").is_file():
            return root
    raise BenchError(f"no benchmarks folder in {' or '.join(str(c) for c in dict.fromkeys(candidates))}: the "
                     "benchmarks live in a checkout of the repository, not in the wheel; run from a checkout")


def _load_report(root: Path):
    spec = importlib.util.spec_from_file_location("crema_bench_report", root / "benchmarks" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


def new_rows(path: Path, offset: int) -> list[dict]:
    """The rows appended to a JSON-lines file after byte ``offset``."""
    if not path.is_file():
        return []
    with path.open("rb") as f:
        f.seek(offset)
        text = f.read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run(args) -> int:
    stages = parse_stages(args.stages)
    root = find_root()
    results = Path(os.environ.get("CREMA_BENCH_RESULTS") or root / "benchmarks" / "results")
    out_dir = Path(args.out) if args.out else results
    env = dict(os.environ)
    if args.quick:
        env["CREMA_BENCH_QUICK"] = "1"
    extra = shlex.split(args.pytest_args)
    report = _load_report(root)  # before the stages: a broken report module fails now, not after an hour
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": bool(args.quick),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "cores": cores,
            "command": "crema-fast bench " + " ".join(stages + (["--quick"] if args.quick else [])), "stages": []}
    rows: dict[str, list[dict]] = {}
    t_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        program, jsonl = STAGES[stage]
        offset = _size(results / jsonl)
        cmd = [sys.executable, "-m", "pytest", f"benchmarks/{program}", "--benchmark-only", "-s", "-q", "-rfEs",
               "-p", "no:cacheprovider", *extra]
        print(f"== crema-fast bench [{i}/{len(stages)}] {stage}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=root, env=env).returncode
        seconds = time.perf_counter() - t0
        rows[stage] = new_rows(results / jsonl, offset)
        meta["stages"].append({"stage": stage, "program": program, "rc": rc, "seconds": seconds,
                               "rows": len(rows[stage])})
        print(f"== {stage}: exit {rc}, {seconds:.1f} s, {len(rows[stage])} rows", flush=True)
    meta["seconds"] = time.perf_counter() - t_all
    first = next((r for rs in rows.values() for r in rs), {})
    meta["device"] = first.get("device", "unknown")
    meta["commit"] = first.get("commit") or _git_commit(root)
    path = report.build(meta, rows, out_dir)
    print(f"report: {path}")
    return 0 if all(s["rc"] == 0 for s in meta["stages"]) else 1
