"""crema-fast bench: stage parsing and its errors, the report builder on fixed rows, one quick stage end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crema_fast.cli import main
from crema_fast.commands import bench

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


def _module(name: str):
    """A module of benchmarks/ (not a package: loaded from its file, with the folder on sys.path)."""
    folder = str(REPO / "benchmarks")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stages_default_subset_order_and_commas():
    assert bench.parse_stages([]) == ["store", "data", "attention", "loss", "train", "eval"]
    assert bench.parse_stages(["train", "store"]) == ["store", "train"]
    assert bench.parse_stages(["loss,Attention", "loss"]) == ["attention", "loss"]


def test_unknown_stage_is_one_line_naming_it_and_the_valid_ones(capsys):
    with pytest.raises(bench.BenchError, match=r"unknown stage 'kernels': expected any of store, data, attention, "
                                               r"loss, train, eval"):
        bench.parse_stages(["loss", "kernels"])
    assert main(["bench", "loss", "kernels", "fused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err == ("crema-fast bench: error: unknown stages 'kernels', 'fused': "
                   "expected any of store, data, attention, loss, train, eval")


def test_no_benchmarks_folder_is_one_line(tmp_path, monkeypatch, capsys):
    """Installed from a wheel (no checkout beside the package), run outside a checkout."""
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "site" / "crema_fast" / "commands" / "bench.py"))
    monkeypatch.chdir(tmp_path)
    assert main(["bench", "loss"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("crema-fast bench: error: no benchmarks folder in ")
    assert "not in the wheel" in err


def _stamp(**row):
    return {"device": "Test CPU (2 cores)", "commit": "abc1234", "date": "2026-12-03T00:00:00+00:00", **row}


ROWS = {
    "store": [_stamp(stage="read", path="StoreReader (out=)", pattern="fully random", ecg_s=8351.25, x_wfdb=24.6),
              _stamp(stage="read", path="wfdb.rdsamp", pattern="fully random", ecg_s=339.1)],
    "data": [_stamp(stage="preprocess", path="scipy per record", store_hz=500, ecg_s=412.5),
             _stamp(stage="preprocess", path="numba (float32 state)", store_hz=500, ecg_s=2875.0, x_scipy=6.97),
             _stamp(stage="loader", path="ECGLoader (float32 state)", store_hz=500, workers=2, ecg_s=1234.4,
                    x_scipy=3.1)],
    "attention": [_stamp(N=n, d=64, B=1, H=4, dtype="float32", impl=impl, **{"pass": p}, ms=ms * n / 120,
                         tflops=tf * n / 120, note="triton: needs a GPU")
                  for n in (120, 384) for impl, ms, tf in (("ref", 0.5, 0.07), ("sdpa", 0.25, 0.14))
                  for p in ("fwd", "bwd", "fwd+bwd")],
    "loss": [_stamp(case="base", impl="ref", B=8, dtype="float32", status="ok", ms=8.68),
             _stamp(case="mse", impl="ref", B=8, dtype="float32", status="ok", ms=3.69, **{"GB/s": 1.18})],
    "train": [_stamp(preset="tiny", path="ref", attention="ref", loss="ref", workers=0, batch=8, status="ok",
                     ecg_per_s=97.75, step_ms=81.84, data_wait_pct=3.25),
              _stamp(preset="tiny", path="fast", attention="sdpa", loss="ref", workers=2, batch=8, status="ok",
                     ecg_per_s=203.1, step_ms=39.39, data_wait_pct=1.5, host_ms=12.34, host_pct=31.3, x_vs_ref=2.078),
              _stamp(preset="tiny", path="host overhead", attention="sdpa", loss="ref", workers=2, batch=8,
                     status="ok", host_ms=12.34)],
    "eval": [_stamp(preset="tiny", attention="triton", batch=64, note="needs a GPU (CUDA)")],
}


def test_report_tables_hold_the_values_and_plots_are_pngs(tmp_path):
    report = _module("report")
    run = {"device": "Test CPU (2 cores)", "commit": "abc1234+dirty", "date": "2026-12-03T00:00:00+00:00",
           "quick": True, "loadavg": [3.5, 2.0, 1.0], "cores": 2, "seconds": 61.2, "command": "crema-fast bench --quick",
           "stages": [{"stage": s, "program": report.PROGRAMS[s], "rc": 0, "seconds": 1.5, "rows": len(ROWS[s])}
                      for s in ROWS] + [{"stage": "extra", "program": "bench_x.py", "rc": 1, "seconds": 0.5, "rows": 0}]}
    path = report.build(run, ROWS, tmp_path / "out")
    assert path == tmp_path / "out" / "report_Test_CPU_2_cores_abc1234_dirty.md"
    text = path.read_text()
    assert "load average at the start: 3.50, 2.00, 1.00 on 2 cores: a shared, busy machine" in text
    assert "quick pass" in text and "| extra | benchmarks/bench_x.py | failed (1) |" in text
    lines = text.splitlines()

    def row_of(*cells):
        hits = [ln for ln in lines if all(f"| {c} |" in ln for c in cells)]
        assert len(hits) == 1, (cells, hits)
        return hits[0]

    assert "| 8,351 |" in row_of("StoreReader (out=)", "fully random") and "| 24.6 |" in row_of("StoreReader (out=)")
    assert "| 2,875 | 6.97 |" in row_of("numba (float32 state)")
    assert "| 1,234 | 3.1 |" in row_of("ECGLoader (float32 state)")
    assert "| 0.5 | 0.07 |" in row_of("120", "ref", "fwd")  # ms, TFLOP/s
    assert "| 0.8 | 0.448 |" in row_of("384", "sdpa", "bwd")
    assert "| 3.69 | 1.18 |" in row_of("mse", "ref")
    fast = row_of("fast", "sdpa")
    assert all(f"| {v} |" in fast for v in ("203", "39.4", "1.5", "12.3", "31.3", "2.08"))
    assert "| 97.8 |" in row_of("ref", "ref", "0")
    assert "needs a GPU (CUDA)" in row_of("triton", "64")
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    stem = path.stem
    assert pngs == sorted(f"{stem}_{s}.png" for s in ("data", "attention", "loss", "train"))
    for name in pngs:
        assert (tmp_path / "out" / name).read_bytes()[:8] == PNG
        assert f"]({name})" in text


def test_report_without_rows_says_so(tmp_path):
    report = _module("report")
    path = report.build({"stages": [{"stage": "loss", "rc": 5, "seconds": 1.0, "rows": 0}]}, {"loss": []}, tmp_path)
    text = path.read_text()
    assert path.name == "report_unknown_unknown.md"
    assert "| loss | benchmarks/bench_crmae_loss.py | nothing ran |" in text and "_no rows_" in text
    assert not list(tmp_path.glob("*.png"))


def test_bench_train_figures_are_medians_of_the_engines_rows():
    bt = _module("bench_train")
    metrics = [{"step": s, "ecg_per_s": e, "data_wait": w, "host_ms": h}
               for s, e, w, h in ((2, 100.0, 0.1, 5.0), (3, 50.0, 0.3, 7.0), (4, 80.0, 0.2, 6.0))]
    f = bt._figures(metrics, batch=8)
    assert f["ecg_per_s"] == 80.0 and f["ecg_per_s_min"] == 50.0 and f["ecg_per_s_max"] == 100.0
    assert f["step_ms"] == pytest.approx(100.0) and f["data_wait_pct"] == pytest.approx(20.0)
    assert f["engine_host_ms"] == 6.0 and "mfu_pct" not in f
    assert bt.paths(cuda=True) == {"ref": {"attention": "ref", "loss": "ref", "workers": 2},
                                   "fast": {"attention": "triton", "loss": "triton", "workers": 2}}
    assert bt.paths(cuda=False)["fast"]["attention"] == "sdpa" and bt.paths(cuda=False)["ref"]["workers"] == 0


def test_bench_loss_quick_end_to_end(tmp_path):
    """The real command on the cheapest stage: rows go under CREMA_BENCH_RESULTS, the report shows only this
    run's rows (not a row that was already in the file)."""
    results, out = tmp_path / "results", tmp_path / "report"
    results.mkdir()
    old = _stamp(case="base", impl="old-run", B=1, status="ok", ms=123456.0)
    (results / "crmae_loss.jsonl").write_text(json.dumps(old) + "\n")
    env = {**os.environ, "CREMA_BENCH_RESULTS": str(results)}
    env.pop("CREMA_BENCH_QUICK", None)
    res = subprocess.run([sys.executable, "-m", "crema_fast.cli", "bench", "loss", "--quick", "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(ln) for ln in (results / "crmae_loss.jsonl").read_text().splitlines()][1:]
    assert [(r["case"], r["impl"], r["B"], r["quick"]) for r in rows] == [("base", "ref", 8, True),
                                                                          ("mse", "ref", 8, True)]
    reports = list(out.glob("report_*.md"))
    assert len(reports) == 1 and f"report: {reports[0]}" in res.stdout
    text = reports[0].read_text()
    report = _module("report")
    for r in rows:
        assert f"| {r['case']} | ref | 8 | float32 | ok | {report.fmt(r['ms'])} |" in text
    assert "old-run" not in text and "| loss | benchmarks/bench_crmae_loss.py | ok |" in text
    assert (out / f"{reports[0].stem}_loss.png").read_bytes()[:8] == PNG
    assert not list((REPO / "benchmarks" / "results").glob(f"*{tmp_path.name}*"))
