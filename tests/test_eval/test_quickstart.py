"""The README's Python quick-start runs as written (store -> loader -> model -> embeddings -> probe)."""

import os
import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart_code() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Python quick-start\n")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, f"{README}: no python block in the quick-start section"
    return block.group(1)


def test_quickstart_runs(shared_data, tmp_path, capsys):
    code = quickstart_code()
    assert len([line for line in code.splitlines() if line.strip()]) <= 16  # short enough to read at once
    # the block names ../shared/data relative to the repository: point it at this checkout's copy
    code = code.replace('"../shared/data/', f'"{shared_data.as_posix()}/')
    cwd = os.getcwd()
    os.chdir(tmp_path)  # ptbxl.zarr is written here
    try:
        scope: dict = {}
        exec(compile(code, str(README), "exec"), scope)
    finally:
        os.chdir(cwd)
    assert scope["emb"].shape == (500, 64) and scope["batch"].signal.shape == (32, 12, 2250)
    m = scope["result"].metrics
    assert m["classes"] == ["NORM", "MI", "STTC", "CD", "HYP"] and m["n"] == 64
    lo, hi = m["macro_auroc_ci"]
    assert 0.5 < lo < m["macro_auroc"] < hi <= 1.0
    printed = capsys.readouterr().out
    assert f"{m['macro_auroc']}" in printed and np.isfinite(m["macro_auroc"])
