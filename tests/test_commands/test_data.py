"""crema_fast.commands._data: ``--data`` as a store (the demo records, a store, a WFDB folder converted
once), and the layering it exists for: nothing below the command layer converts or imports a command."""

import ast
from pathlib import Path

import pytest

from crema_fast.commands._data import resolve_store

REPO = Path(__file__).resolve().parents[2]


def test_resolve_store_converts_once_and_accepts_stores(tmp_path, demo_store):
    assert resolve_store(demo_store, tmp_path) == (demo_store, "store")
    store, how = resolve_store("", tmp_path)  # the shipped demo records
    assert how == "converted" and Path(store).parent == tmp_path / "stores"
    assert resolve_store("", tmp_path) == (store, "cached")
    from zarr_store.reader import StoreReader

    assert len(StoreReader(store)) == 15
    with pytest.raises(FileNotFoundError):
        resolve_store(str(tmp_path / "nope"), tmp_path)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return names


@pytest.mark.parametrize("folder", ["crema_fast/train", "crema_fast/data", "crema_fast/model", "benchmarks",
                                    "tools"])
def test_no_command_module_or_conversion_below_the_command_layer(folder):
    """Training, data, model, benchmarks and tools import no CLI module; the first three never convert."""
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, folder
    for path in files:
        names = _imports(path)
        bad = {n for n in names if n.startswith(("crema_fast.cli", "crema_fast.commands"))}
        if folder.startswith("crema_fast/"):
            bad |= {n for n in names if n.startswith("zarr_store.convert")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


@pytest.mark.parametrize("kind", ["no records", "only bad records"])
def test_failed_conversion_leaves_nothing(tmp_path, kind):
    """A --data folder that converts to nothing raises one error and leaves no stores/ folder (nor a
    store without rows) behind."""
    from crema_fast.errors import CremaError
    from zarr_store.errors import StoreError

    src = tmp_path / "src"
    src.mkdir()
    if kind == "only bad records":
        (src / "a.hea").write_text("a 12 500 5000\nnot a signal line\n")
    with pytest.raises((CremaError, StoreError), match="--data: no record|no WFDB|no record|no .hea"):
        resolve_store(str(src), tmp_path / "runs")
    assert not (tmp_path / "runs" / "stores").exists()
