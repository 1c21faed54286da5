"""What a command's ``--data`` names, as a store: the one place that converts on demand.

Commands take a store or a folder of WFDB records; a folder is converted once into ``<out>/stores/`` and
reused. This lives in the command layer so that nothing below it (training, evaluation, benchmarks)
converts behind the user's back: the layers under it take a store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from crema_fast.errors import CremaError

# The 15 PTB-XL records shipped with the package: what `crema-fast pretrain` trains on without --data.
DEMO_DATA = Path(__file__).resolve().parents[1] / "demo_data"


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def resolve_store(data: str, out_root: str | Path, *, convert_now: bool = True) -> tuple[str, str]:
    """(store path or URL, what it is). ``data``: "" (the demo records), a store, or a WFDB folder, which is
    converted into ``<out_root>/stores/<name>-<hash>.zarr`` unless a finished conversion is there. Local
    paths come back absolute: checkpoints record the store, and ``--resume`` may run from another folder."""
    if data and "://" in data:
        return data, "store"
    src = DEMO_DATA if not data else Path(data).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"--data: no such store or folder: {src}")
    if _is_store(src):
        return str(src.resolve()), "store"
    if not src.is_dir():
        raise CremaError(f"--data: expected a store or a folder of WFDB records, got the file {src}")
    name = "demo-ptbxl15" if not data else (src.resolve().name or "data")
    tag = hashlib.sha1(str(src.resolve()).encode()).hexdigest()[:8]
    store = Path(out_root).expanduser().resolve() / "stores" / f"{name}-{tag}.zarr"
    done = store.with_suffix(".done.json")
    if done.is_file() and _is_store(store):
        return str(store), "cached"
    if not convert_now:
        return str(store), "to convert"
    from zarr_store.convert import convert

    made = [p for p in (store.parent, store) if not p.exists()]  # what a failure must not leave behind
    store.parent.mkdir(parents=True, exist_ok=True)
    print(f"converting {src} -> {store}")
    t0 = time.perf_counter()
    try:
        summary = convert([src], store, progress=True)
        rows = getattr(summary, "rows", None)
        if not rows:
            raise CremaError(f"--data: no record of {src} could be converted ({summary})")
    except Exception:
        # A conversion that failed on its input (not one killed or interrupted, which resumes) leaves
        # nothing: an empty stores/ folder or a store without rows would only mislead the next run.
        for p in reversed(made):
            shutil.rmtree(p, ignore_errors=True)
        raise
    done.write_text(json.dumps({"source": str(src.resolve()), "rows": rows,
                                "seconds": time.perf_counter() - t0}, indent=2) + "\n")
    return str(store), "converted"
