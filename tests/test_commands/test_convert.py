"""crema-fast convert (crema_fast.commands.convert): the summary it prints, one-line errors naming the
flags, exit codes."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.test_zarr_store.archives import load, write_archive


REPO = Path(__file__).resolve().parents[2]


def test_cli_convert_and_missing_folder(tmp_path, capsys):
    from crema_fast.cli import main

    assert main(["convert", str(tmp_path / "nope"), "--out", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]
    arch = write_archive(tmp_path / "arch", n=2, bad=("flat",))
    assert main(["convert", str(arch.root), "--out", str(tmp_path / "s.zarr"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "converted      2 records" in out and "flat 1" in out and "compression" in out
    assert math.isclose(len(load(tmp_path / "s.zarr")["record_id"]), 2)
    assert os.path.exists(tmp_path / "s.zarr" / "_convert" / "quarantine.json")


@pytest.mark.parametrize("flags,named", [(["--window", "0"], "--window"), (["--window", "0.0011"], "--window"),
                                         (["--shard-size", "0"], "--shard-size"), (["--workers", "0"], "--workers"),
                                         (["--rate", "-5"], "--rate")])
def test_cli_errors_name_the_flags(tmp_path, capsys, flags, named):
    from crema_fast.cli import main

    arch = write_archive(tmp_path / "arch", n=1, bad=())
    assert main(["convert", str(arch.root), "--out", str(tmp_path / "s.zarr"), "--no-progress", *flags]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.split("error: ", 1)[1].startswith(f"{named}: expected"), err
    assert "window_s" not in err and "shard_size" not in err


def test_cli_out_is_a_zarr_array_or_broken(tmp_path, capsys):
    """One line, exit 2, no traceback, for an out that is a Zarr array or has a broken zarr.json."""
    from crema_fast.cli import main

    arch = write_archive(tmp_path / "arch", n=1, bad=())
    zarr.create_array(str(tmp_path / "array.zarr"), shape=(3,), dtype="int8")
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    for out in ("array.zarr", "broken.zarr"):
        assert main(["convert", str(arch.root), "--out", str(tmp_path / out), "--no-progress"]) == 2
        (err,) = capsys.readouterr().err.strip().splitlines()
        assert "expected a crema-fast store or a new path" in err and "Traceback" not in err


def test_cli_subprocess_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "crema_fast.cli", "convert", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "s.zarr")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert textwrap.shorten(proc.stderr, 200).startswith("crema-fast convert: error:")
