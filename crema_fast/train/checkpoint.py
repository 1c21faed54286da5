"""Checkpoints: explicit dictionaries, written atomically, the last few kept.

A checkpoint is one ``torch.save``d dict (format 1)::

    {"format": 1, "step": int,                # optimizer steps done
     "model": state_dict,                     # the unwrapped model (no DDP "module." / compile prefixes)
     "optimizer": ..., "scheduler": ...,      # AdamW and LambdaLR state
     "loader": [state per rank],              # ECGLoader.state_dict() of every rank, rank order
     "rng": [{"python", "numpy", "torch", "cuda"} per rank],
     "config": RunConfig.to_dict(), "versions": {...}, "metrics": {...last logged row...}}

Files are ``<run>/checkpoints/step_0000200.pt``; writing goes to a temporary file in the same folder,
fsynced, then ``os.replace`` (atomic on POSIX) and an fsync of the folder, so a killed run (or a crash of
the machine) never leaves a half-written checkpoint under a checkpoint's name. Beside each file,
``step_0000200.pt.sha256`` holds the sha256 of its bytes (written first, computed as the file is
written): torch.load does not check the zip's CRCs, so a flipped byte in a tensor used to load and
send training to NaN. Loading verifies it (a checkpoint without one, from before, or copied without
it, loads unverified). Reading a run folder falls back to the newest checkpoint that reads and
verifies, saying which one it skipped and why. Loading checks the architecture fields of the saved
config against the model's and names every mismatch (``CremaError``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

from crema_fast.errors import CremaError
from crema_fast.train.config import RunConfig, arch_mismatch

FORMAT = 1
_NAME = re.compile(r"^step_(\d+)\.pt$")
DIGEST_SUFFIX = ".sha256"


class _Hashing:
    """A file wrapper that hashes what is written through it (one pass over a checkpoint's bytes)."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def digest_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_sha256(path: str | Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            sha.update(block)
    return sha.hexdigest()


def versions() -> dict[str, str]:
    """Library versions a checkpoint was written with (informative; not checked on load)."""
    import crema_fast

    return {"crema_fast": crema_fast.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model under DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def rng_state() -> dict:
    """This process's RNG states: Python, NumPy's legacy global, torch CPU, and CUDA (all devices)."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run's checkpoints, oldest first (by step)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(d: Path) -> None:
    """Make a rename in ``d`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, state: dict, *, keep_last: int = 3) -> Path:
    """Write ``state`` (with "step") as ``step_NNNNNNN.pt`` atomically and delete all but the last
    ``keep_last`` checkpoints. ``state`` must already hold everything listed in the module docstring."""
    missing = {"step", "model", "optimizer", "scheduler", "config"} - set(state)
    if missing:
        raise ValueError(f"save_checkpoint: state lacks {sorted(missing)}")
    d = checkpoint_dir(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"step_{int(state['step']):07d}.pt"
    tmp = d / f".{path.name}.tmp-{os.getpid()}"
    digest, digest_tmp = digest_path(path), d / f".{path.name}{DIGEST_SUFFIX}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            out = _Hashing(f)
            torch.save({"format": FORMAT, "versions": versions(), **state}, out)
            f.flush()
            os.fsync(f.fileno())  # the bytes on disk before the name points at them (a crash after replace)
        # The digest first: a kill between the two renames leaves a digest without its checkpoint
        # (ignored), never a checkpoint beside an older step's digest.
        digest_tmp.write_text(out.sha.hexdigest() + "\n")
        os.replace(digest_tmp, digest)
        os.replace(tmp, path)
        _fsync_dir(d)  # and the renames themselves
    finally:
        for t in (tmp, digest_tmp):
            if t.exists():
                t.unlink()
    for old in list_checkpoints(run_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
        digest_path(old).unlink(missing_ok=True)
    return path


def _load(path: Path) -> dict:
    """One checkpoint file -> its dict, or CremaError saying why not."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    digest = digest_path(path)
    if digest.is_file():
        want, got = digest.read_text().strip(), file_sha256(path)
        if want != got:
            raise CremaError(f"checkpoint {path} is corrupt: its sha256 is {got[:16]}..., {digest.name} "
                             f"says {want[:16]}... (the file changed after it was written)")
    try:
        # weights_only=False: the dict holds numpy RNG state and plain Python objects we wrote ourselves.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which
        raise CremaError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CremaError(f"{path}: not a crema-fast checkpoint of format {FORMAT}")
    ckpt["path"] = str(path)
    return ckpt


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict onto the CPU. ``path``: a file (read as it is), or a run folder: its latest
    checkpoint, or, when that one cannot be read (a disk that filled up, a copy cut short), the newest
    older one that can, saying on stderr which one it used. CremaError when none can be read."""
    path = Path(path)
    if not path.is_dir():
        return _load(path)
    found = list_checkpoints(path)
    if not found:
        raise CremaError(f"no checkpoint in {checkpoint_dir(path)} (expected step_NNNNNNN.pt files)")
    errors = []
    for candidate in reversed(found):
        try:
            ckpt = _load(candidate)
        except CremaError as exc:
            errors.append(str(exc))
            continue
        if errors:
            print(f"warning: skipped {len(errors)} newer checkpoint(s) ({'; '.join(errors)}); using the previous "
                  f"checkpoint {candidate} (step {ckpt.get('step')}) instead", file=sys.stderr)
        return ckpt
    raise CremaError("; ".join(errors) if len(errors) == 1 else
                     f"no readable checkpoint in {checkpoint_dir(path)}: " + "; ".join(errors))


def load_model_state(model: torch.nn.Module, ckpt: dict, cfg: RunConfig | None = None) -> None:
    """Load the checkpoint's weights into ``model`` (wrapped or not) after checking that the saved
    architecture matches ``cfg.model`` (when given) and that every tensor's name and shape agree.
    Raises ``CremaError`` naming each mismatch."""
    saved = RunConfig.from_dict(ckpt["config"])
    where = ckpt.get("path", "checkpoint")
    if cfg is not None:
        diff = arch_mismatch(saved.model, cfg.model)
        if diff:
            raise CremaError(f"{where} was written for another architecture (checkpoint vs this run): "
                             + "; ".join(diff))
    target = unwrap(model)
    own = target.state_dict()
    state = ckpt["model"]
    problems = [f"{k}: shape {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems += [f"missing {k}" for k in own if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in own]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CremaError(f"{where} does not fit this model: {shown}")
    target.load_state_dict(state)
