"""The report of one ``crema-fast bench`` run: one Markdown file with tables and PNG plots, built only from
the result rows that run appended (benchmarks/results/<bench>.jsonl), so that it shows one run's figures.

``build(run, rows, out_dir) -> Path`` writes ``report_<device>_<commit>.md`` and its PNGs into
``out_dir``. ``run`` describes the run (device, commit, date, quick, load average at the start, cores,
the command, and per stage: program, exit status, seconds, rows); ``rows`` maps a stage name (store,
data, attention, loss, train, eval) to the rows it appended. What each figure is comes from the
benchmark that wrote it: see its module docstring (the report links them).

Plots (matplotlib, Agg): the data path's ECG/s per core against scipy and wfdb; attention TFLOP/s
against N per impl (``plot_attention.plot``); the loss's time, GB/s and peak memory per impl; training
ECG/s, data-wait share and host overhead, ref path against fast path.
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROGRAMS = {"store": "bench_store.py", "data": "bench_data.py", "attention": "bench_attention.py",
            "loss": "bench_crmae_loss.py", "train": "bench_train.py", "eval": "bench_eval.py"}


PASSES = {"fwd": 0, "bwd": 1, "fwd+bwd": 2}


def slug(text: str) -> str:
    """A file-name-safe form of a device name or commit (plot_attention's rule)."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", str(text)).strip("_") or "unknown"


def report_name(device: str, commit: str) -> str:
    return f"report_{slug(device)}_{slug(commit)}.md"


def fmt(v) -> str:
    """One table cell: None and NaN blank, floats to 3-4 significant digits, thousands separated."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v != 0 and abs(v) < 0.01:
            return f"{v:.2e}"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of ``rows``: columns are (key, header); a column no row has is left out."""
    cols = [(k, h) for k, h in columns if any(r.get(k) not in (None, "") for r in rows)]
    if not rows or not cols:
        return "_no rows_\n"
    out = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    out += ["| " + " | ".join(fmt(r.get(k)) for k, _ in cols) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, text: str, png: Path, label: str):
    """Write ``fig`` to ``png`` and return the section's text with the image linked, and [png]."""
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    _plt().close(fig)
    return text + f"\n![{label}]({png.name})\n", [png]


def _bars(ax, labels, values, colors, unit):
    y = range(len(labels))
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(unit)
    for i, v in enumerate(values):
        ax.text(v, i, f" {fmt(float(v))}", va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3)


# -- the sections --------------------------------------------------------------------------------------

def _store(rows, out, stem):
    cols = [("stage", "stage"), ("path", "path"), ("pattern", "pattern"), ("ecg_s", "ECG/s per core"),
            ("ecg_s_wall", "ECG/s wall"), ("mb_s", "MB/s"), ("x_rdsamp", "x rdsamp"), ("x_zarr", "x zarr API"),
            ("x_wfdb", "x wfdb"), ("pct_bare", "% of bare decode"), ("bytes_per_ecg", "bytes/ECG"),
            ("ratio_raw", "ratio vs raw")]
    return "## Store (one core)\n\n" + table(rows, cols), []


def _data(rows, out, stem, store_rows=()):
    cols = [("stage", "stage"), ("path", "path"), ("store_hz", "store Hz"), ("workers", "workers"),
            ("ecg_s", "ECG/s per core"), ("ecg_s_min", "min"), ("ecg_s_max", "max"), ("ecg_s_wall", "ECG/s wall"),
            ("x_scipy", "x scipy"), ("x_torch_ecg", "x torch_ecg"), ("compile_s", "compile s"),
            ("cache_load_s", "cache load s"), ("status", "status")]
    text = "## Data path (ECG/s per CPU-second)\n\n" + table(rows, cols)
    bars = [(f"{r['stage']}: {r['path']}" + (f", {r['workers']} workers" if r.get("workers") else "")
             + (f" ({r['store_hz']} Hz)" if r.get("store_hz") else ""), r["ecg_s"], r["path"])
            for r in rows if isinstance(r.get("ecg_s"), (int, float))]
    bars += [(f"store {r['stage']}: {r['path']} ({r['pattern']})", r["ecg_s"], r["path"]) for r in store_rows
             if r.get("path") in ("wfdb.rdsamp", "StoreReader (out=)") and r.get("pattern") in ("records", "fully random")
             and isinstance(r.get("ecg_s"), (int, float))]
    if not bars:
        return text, []
    plt = _plt()
    color = lambda p: "0.6" if "scipy" in p or "wfdb" in p or "torch_ecg" in p else "C3"  # noqa: E731
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(bars) + 1.4))
    _bars(ax, [b[0] for b in bars], [b[1] for b in bars], [color(b[2]) for b in bars], "ECG/s per core")
    ax.set_title("Data path: ours (red) against scipy / torch_ecg / wfdb (grey)")
    return _save(fig, text, out / f"{stem}_data.png", "data path")


def _attention(rows, out, stem):
    cols = [("N", "N"), ("d", "d"), ("B", "B"), ("H", "H"), ("dtype", "dtype"), ("impl", "impl"), ("pass", "pass"),
            ("ms", "ms"), ("ms_iqr", "IQR ms"), ("tflops", "TFLOP/s"), ("pct_peak", "% peak"),
            ("pct_roofline", "% roofline"), ("x_vs_ref", "x ref"), ("x_vs_sdpa", "x sdpa"),
            ("x_vs_sdpa_flash", "x sdpa flash"), ("x_vs_sdpa_cudnn", "x sdpa cuDNN")]
    text = ("## Attention (TFLOP/s; forward FLOPs = 4 B H N² d, backward 2.5x)\n\n"
            + table(sorted(rows, key=lambda r: (r.get("d", 0), r.get("N", 0), PASSES.get(r.get("pass"), 9),
                                                r.get("impl", ""))), cols))
    notes = sorted({r["note"] for r in rows if r.get("note")})
    text += "".join(f"\n_{n}_\n" for n in notes)
    pts = [r for r in rows if isinstance(r.get("tflops"), (int, float)) and "N" in r]
    if not pts:
        return text, []
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    from plot_attention import plot

    png = out / f"{stem}_attention.png"
    plot(pts, png, targets=any(r.get("pct_peak") is not None for r in pts))
    return text + f"\n![attention]({png.name})\n", [png]


def _loss(rows, out, stem):
    cols = [("case", "case"), ("impl", "impl"), ("B", "B"), ("dtype", "dtype"), ("status", "status"), ("ms", "ms"),
            ("ms_iqr", "IQR ms"), ("GB/s", "GB/s"), ("pct_bw", "% bandwidth"), ("peak_MiB", "peak MiB"),
            ("x_vs_ref", "x ref"), ("x_vs_compiled", "x compiled"), ("mem_x_vs_ref", "memory x ref")]
    text = "## CR-MAE loss (forward + backward)\n\n" + table(rows, cols)
    notes = sorted({r["note"] for r in rows if r.get("note")})
    text += "".join(f"\n_{n}_\n" for n in notes)
    ok = [r for r in rows if isinstance(r.get("ms"), (int, float))]
    if not ok:
        return text, []
    plt = _plt()
    panels = [("ms", "ms per forward+backward")]
    if any(isinstance(r.get("GB/s"), (int, float)) for r in ok):
        panels.append(("GB/s", "GB/s (MSE part)"))
    if any(isinstance(r.get("peak_MiB"), (int, float)) for r in ok):
        panels.append(("peak_MiB", "peak MiB"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 0.35 * len(ok) + 1.6), squeeze=False)
    for ax, (key, unit) in zip(axes[0], panels):
        sel = [r for r in ok if isinstance(r.get(key), (int, float))]
        _bars(ax, [f"{r['case']} {r['impl']} B={r['B']}" for r in sel], [r[key] for r in sel],
              ["C3" if r["impl"] == "triton" else "0.6" for r in sel], unit)
    fig.suptitle("CR-MAE loss: triton (red) against the reference (grey)")
    return _save(fig, text, out / f"{stem}_loss.png", "loss")


def _train(rows, out, stem):
    cols = [("preset", "preset"), ("path", "path"), ("attention", "attention"), ("loss", "loss"),
            ("workers", "workers"), ("batch", "batch"), ("amp", "amp"), ("status", "status"),
            ("ecg_per_s", "ECG/s"), ("ecg_per_s_iqr", "IQR"), ("step_ms", "step ms"), ("data_wait_pct", "data wait %"),
            ("host_ms", "host ms/step"), ("host_pct", "host % of step"), ("mfu_pct", "MFU %"),
            ("x_vs_ref", "x ref"), ("note", "note")]
    text = ("## Training step (ref path against fast path, same model, same batch, same run)\n\n"
            + table(rows, cols))
    paths = [r for r in rows if r.get("path") in ("ref", "fast") and isinstance(r.get("ecg_per_s"), (int, float))]
    if not paths:
        return text, []
    plt = _plt()
    host = [r for r in rows if r.get("path") == "host overhead" and isinstance(r.get("host_ms"), (int, float))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.5 * len(paths)))
    labels = [f"{r['path']}: {r['attention']} attn, {r['loss']} loss, {r.get('workers', 0)} workers" for r in paths]
    _bars(axes[0], labels, [r["ecg_per_s"] for r in paths], ["C3" if r["path"] == "fast" else "0.6" for r in paths],
          "ECG/s")
    axes[0].set_title(f"{paths[0].get('preset')} preset, batch {paths[0].get('batch')}")
    step = [r["step_ms"] for r in paths]
    wait = [r["step_ms"] * r.get("data_wait_pct", 0) / 100 for r in paths]
    y = list(range(len(paths)))
    axes[1].barh(y, [s - w for s, w in zip(step, wait)], color="C0", label="compute and the rest")
    axes[1].barh(y, wait, left=[s - w for s, w in zip(step, wait)], color="C1", label="data wait")
    if host:
        axes[1].axvline(host[0]["host_ms"], color="k", ls=":", label=f"host overhead {fmt(host[0]['host_ms'])} ms")
    axes[1].set_yticks(y, [r["path"] for r in paths])
    axes[1].invert_yaxis()
    axes[1].set_xlabel("ms per step")
    axes[1].legend(fontsize=8)
    return _save(fig, text, out / f"{stem}_train.png", "training")


def _eval(rows, out, stem):
    cols = [("preset", "preset"), ("attention", "attention"), ("batch", "batch"), ("amp", "amp"),
            ("encode_ecg_s", "encode ECG/s"), ("embed_ecg_s", "embed ECG/s"), ("embed_ecg_per_cpu_s", "embed ECG/CPU-s"),
            ("encode_tflops", "encode TFLOP/s"), ("encode_pct_peak", "% peak"), ("x_vs_ref_encode", "x ref encode"),
            ("x_vs_ref_embed", "x ref embed"), ("note", "note")]
    return "## Embedding (frozen encoder)\n\n" + table(rows, cols), []


SECTIONS = {"store": _store, "data": _data, "attention": _attention, "loss": _loss, "train": _train, "eval": _eval}


def build(run: dict, rows: dict[str, list[dict]], out_dir: Path) -> Path:
    """Write the report (Markdown + PNGs) of one run into ``out_dir``; returns the Markdown's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = report_name(run.get("device", "unknown"), run.get("commit", "unknown"))
    stem = name.removesuffix(".md")
    load = run.get("loadavg")
    cores = run.get("cores")
    lines = [f"# crema-fast bench: {run.get('device', 'unknown')}, commit {run.get('commit', 'unknown')}", "",
             f"- date: {run.get('date', '')}; {'quick pass (CREMA_BENCH_QUICK=1: small shapes and record counts)' if run.get('quick') else 'full run'}; "
             f"{fmt(run.get('seconds'))} s in all",
             f"- command: `{run.get('command', 'crema-fast bench')}`"]
    if load is not None:
        busy = cores and load[0] > 0.5 * cores
        lines.append(f"- load average at the start: {', '.join(f'{v:.2f}' for v in load)} on {cores} cores"
                     + (": a shared, busy machine; timings are noisy (per-core rates count CPU-seconds, which "
                        "other processes skew less than wall time)" if busy else
                        "; timings on a shared machine are noisy"))
    lines += ["- each figure's definition: the docstring of its benchmark (benchmarks/bench_*.py)", "",
              "| stage | program | exit | seconds | rows |", "| --- | --- | --- | --- | --- |"]
    for s in run.get("stages", []):
        status = {0: "ok", 5: "nothing ran"}.get(s.get("rc"), f"failed ({s.get('rc')})")
        lines.append(f"| {s['stage']} | benchmarks/{s.get('program', PROGRAMS.get(s['stage'], '?'))} | {status} | "
                     f"{fmt(s.get('seconds'))} | {s.get('rows', len(rows.get(s['stage'], [])))} |")
    lines.append("")
    pngs = []
    for stage, section in SECTIONS.items():
        if stage not in rows:
            continue
        if stage == "data":
            text, made = section(rows[stage], out_dir, stem, rows.get("store", ()))
        else:
            text, made = section(rows[stage], out_dir, stem)
        lines += [text]
        pngs += made
    path = out_dir / name
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
