"""Plot the attention benchmark's GPU rows: TFLOP/s against N per pass and head dim, one line per impl,
with issue 5's d = 64 targets marked (forward and backward at N = 512/1024/2048, 60% of the roofline).

Run: ``python benchmarks/plot_attention.py [--commit C] [--out PNG]``; by default the newest commit's rows
for the newest GPU device in benchmarks/results/attention.jsonl, saved beside it as
attention_<device>_<commit>.png. bench_attention.py calls ``plot`` after each GPU run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

# harness.results_dir()'s rule (this script also runs on its own, without the harness on sys.path)
RESULTS = Path(os.environ.get("CREMA_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
IMPLS = {"triton": "C3", "sdpa_cudnn": "C0", "sdpa_flash": "C2", "sdpa_efficient": "C1", "sdpa": "C0", "ref": "0.6"}
# Issue 5's targets on an H100, bf16, d = 64 (TFLOP/s at N = 512, 1024, 2048).
TARGETS = {"fwd": {512: 330, 1024: 380, 2048: 400}, "bwd": {512: 245, 1024: 325, 2048: 380}}


def plot(rows: list[dict], out: Path, targets: bool = True) -> Path:
    """rows: benchmark rows (N, d, impl, pass, tflops, roofline_tflops) of one device and commit;
    targets: mark issue 5's H100 targets (off for CPU rows, whose scale they would flatten)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    passes, dims = ["fwd", "bwd", "fwd+bwd"], sorted({r["d"] for r in rows})
    fig, axes = plt.subplots(len(dims), 3, figsize=(14, 4.2 * len(dims)), squeeze=False, sharex=True)
    for i, d in enumerate(dims):
        for j, p in enumerate(passes):
            ax = axes[i][j]
            for impl, color in IMPLS.items():
                pts = sorted((r["N"], r["tflops"]) for r in rows if r["d"] == d and r["pass"] == p and r["impl"] == impl)
                if pts:
                    ax.plot(*zip(*pts), "o-", color=color, label=impl, lw=2.2 if impl == "triton" else 1.2, ms=4)
            roof = sorted({(r["N"], 0.6 * r["roofline_tflops"]) for r in rows if r["d"] == d and r.get("roofline_tflops")})
            if roof and p == "fwd":
                ax.plot(*zip(*roof), ":", color="0.4", label="60% of roofline")
            if targets and d == 64 and p in TARGETS:
                ax.plot(list(TARGETS[p]), list(TARGETS[p].values()), "k*", ms=11, label="target (issue 5)")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{p}, d = {d}")
            ax.set_ylabel("TFLOP/s")
            ax.grid(alpha=0.3)
            if i == len(dims) - 1:
                ax.set_xlabel("N (tokens)")
    axes[0][0].legend(fontsize=8)
    r0 = rows[0]
    fig.suptitle(f"Attention, {r0.get('dtype', 'bfloat16')}, {r0['device']}, commit {r0['commit']} ({r0['date'][:10]}); "
                 "FLOPs: 4BHN²d forward, 2.5x backward")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commit", help="rows of this commit (default: the newest GPU run's)")
    ap.add_argument("--out", type=Path, help="PNG path (default: beside the results)")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in (RESULTS / "attention.jsonl").read_text().splitlines() if line.strip()]
    gpu = [r for r in rows if r.get("dtype") == "bfloat16" and r.get("pct_peak") is not None]
    if not gpu:
        raise SystemExit(f"{RESULTS / 'attention.jsonl'}: no GPU rows (run tools/gpu_lane.sh on a GPU)")
    commit = args.commit or gpu[-1]["commit"]
    device = gpu[-1]["device"]
    sel = [r for r in gpu if r["commit"] == commit and r["device"] == device]
    if not sel:
        raise SystemExit(f"--commit {commit}: no GPU rows of that commit in {RESULTS / 'attention.jsonl'}")
    newest = {(r["N"], r["d"], r["impl"], r["pass"]): r for r in sel}  # a later run's row replaces an earlier
    sel = list(newest.values())
    out = args.out or RESULTS / f"attention_{re.sub(r'[^A-Za-z0-9.-]+', '_', device)}_{commit}.png"
    print(plot(sel, out))


if __name__ == "__main__":
    main()
