"""Array inputs of ``convert``: a CODE-15% folder, an HDF5 dataset, a ``.npy`` / ``.npz`` array.

What a source string names (``parse_array_sources``):
- a folder holding ``exams.csv`` and ``exams_part<k>.hdf5`` files: CODE-15% (Ribeiro et al., Zenodo
  4916206). Each part holds ``tracings`` (N, 4096, 12) float at 400 Hz in mV and ``exam_id`` (N,);
  parts are taken in the order of k (numeric, not text: part10 after part9). exams.csv gives, per
  exam_id, age, is_male, patient_id and the six abnormalities 1dAVb, RBBB, LBBB, SB, ST, AF (stored as
  the comma-joined names of those that are true, in that order; "" = none of the six). A missing
  column is one BadArgumentError naming it, before anything is written.
- ``file.h5:dataset`` (or a file with a single 3-D dataset), ``file.npz:name`` (or its single array),
  ``file.npy``: (N, T, leads) or (N, leads, T) with the rate, the lead names and (when the shape cannot
  tell) the layout given by the caller (``ArrayOptions``). Record ids come from an ids dataset / array
  (``ArrayOptions.ids``; by default ``exam_id`` or ``ids`` when the file has one of length N), else the
  item's index.

Lead order: an HDF5 attribute ``leads`` (or ``lead_names``, ``sig_name``) on the dataset, or on the
file, names the leads when present; else ``ArrayOptions.leads`` (``--leads``); else, for CODE-15%
only, its documented order I, II, III, aVR, aVL, aVF, V1-V6. Leads are matched by name as for WFDB
(wfdb_io.map_leads). The order is then *checked* on the first block of exams (zarr_store.hdf5_io.
check_limb_leads: Einthoven's II = I + III and Goldberger's aVR + aVL + aVF = 0, which every 12-lead
device's derived leads satisfy): an order that fails is a one-line error when it was the documented
default (say ``--leads``), a note in the summary when the caller gave it.
Units: ``ArrayOptions.units`` (``--units``: mV, uV, V; CODE-15%'s default mV), scaled to the store's µV.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zarr_store.errors import BadArgumentError
from zarr_store.paths import is_url, local_path, url_fs
from zarr_store.sources import parse_age, parse_patient_id
from zarr_store.wfdb_io import LEADS

CODE15_CSV = "exams.csv"
CODE15_PART = re.compile(r"^exams_part(\d+)\.hdf5?$")
CODE15_RATE = 400.0
CODE15_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
CODE15_COLUMNS = ("exam_id", "age", "is_male", "patient_id", *CODE15_LABELS)
ARRAY_SUFFIXES = (".h5", ".hdf5", ".hdf", ".npy", ".npz")
LEAD_ATTRS = ("leads", "lead_names", "sig_name")
UNITS_UV = {"mv": 1000.0, "uv": 1.0, "\u00b5v": 1.0, "\u03bcv": 1.0, "v": 1e6}


@dataclass(frozen=True)
class ArrayOptions:
    """What an array does not say about itself: its rate in Hz, lead names, layout ("NTL" = (N, T,
    leads), "NLT" = (N, leads, T)), units (mV, uV, V) and the name of its ids dataset / array. None:
    the file's own attribute, CODE-15%'s documented value, or the shape decides (see the module
    docstring); an argument nothing decides is a BadArgumentError naming it."""

    input_rate: float | None = None
    leads: tuple[str, ...] | None = None
    layout: str | None = None
    units: str | None = None
    ids: str | None = None

    def __post_init__(self):
        if self.input_rate is not None and not (math.isfinite(self.input_rate) and 1 <= self.input_rate <= 1e6):
            raise BadArgumentError(f"input_rate: expected a sampling rate in Hz (1 to 1e6), got {self.input_rate!r}")
        if self.layout is not None and self.layout.upper() not in ("NTL", "NLT"):
            raise BadArgumentError(f"layout: expected NTL (items, time, leads) or NLT, got {self.layout!r}")
        if self.units is not None and self.units.strip().lower() not in UNITS_UV:
            raise BadArgumentError(f"units: expected one of mV, uV, V, got {self.units!r}")
        if self.leads is not None and not self.leads:
            raise BadArgumentError("leads: expected a comma-separated list of lead names, got none")


@dataclass(frozen=True)
class Part:
    """One array of items, as a task reads it: ``path`` (a local file or an fsspec URL), ``kind`` ("hdf5", "npy",
    "npz"), ``dataset`` (HDF5 dataset / npz member; None for npy), ``layout``, shape (n items, t
    samples, n_leads) in NTL terms. ``error``: why the file cannot be read (a truncated HDF5 part),
    the part is then quarantined as a whole."""

    path: str
    kind: str
    dataset: str | None
    layout: str = "NTL"
    n: int = 0
    t: int = 0
    n_leads: int = 0
    error: str = ""

    @property
    def name(self) -> str:
        """The file's name, with the dataset / member when the file may hold several."""
        base = os.path.basename(self.path)
        return base if self.dataset in (None, "tracings") else f"{base}:{self.dataset}"


@dataclass
class ArrayInput:
    """Everything a conversion needs of one source string: its parts (in order), record ids and
    metadata per part (lists of length part.n), the source name stored per row, rate, µV per unit,
    lead names, where the lead order came from, and the CODE-15% csv's join counts."""

    spec: str
    source: str
    parts: list[Part]
    ids: list[list[str]]
    meta: list[list[tuple[float, int, str, str]] | None]  # (age, sex, labels, patient_id) per item
    fs: float
    uv: float
    units: str
    leads: tuple[str, ...]
    leads_from: str  # "attribute", "option" or "documented"
    not_in_csv: int = 0


def is_array_spec(spec) -> bool:
    """True when ``spec`` names an array input (a file with an array suffix, optionally ``:name``,
    or a CODE-15% folder; a local path or an fsspec URL), False for anything else (WFDB folders)."""
    text = str(spec)
    path, _ = split_spec(text)
    if path.lower().endswith(ARRAY_SUFFIXES):
        return True
    fs, inner = url_fs(path.rstrip("/"))  # a local path too: fsspec's local file system
    return (fs.isdir(inner) and fs.isfile(f"{inner}/{CODE15_CSV}")
            and bool(_code15_parts(fs.ls(inner, detail=False))))


def _code15_parts(names) -> list[tuple[int, str]]:
    """(k, file name) of the exams_part<k>.hdf5 among ``names`` (paths or names), in order of k."""
    return sorted((int(m.group(1)), base) for n in names
                  if (m := CODE15_PART.match(base := str(n).rstrip("/").rsplit("/", 1)[-1])))


def split_spec(text: str) -> tuple[str, str | None]:
    """``file.h5:dataset`` -> (file, dataset); a path without a name after its suffix -> (path, None)."""
    m = re.match(r"^(.*?\.(?:h5|hdf5|hdf|npz|npy)):([^/\\]+)$", text, re.IGNORECASE)
    return (m.group(1), m.group(2)) if m else (text, None)


def parse_array_sources(specs: list, opts: ArrayOptions) -> list[ArrayInput]:
    """Every source string as an ArrayInput (raises BadArgumentError for bad arguments)."""
    from zarr_store import hdf5_io

    inputs = []
    for spec in specs:
        path, name = split_spec(str(spec))
        if is_url(path):  # fsspec: HDF5 files and CODE-15% folders (hdf5_io reads them in blocks)
            fs, inner = url_fs(path.rstrip("/"))
            if not fs.exists(inner):
                raise BadArgumentError(f"source {path}: no such file or folder")
            is_dir, where = fs.isdir(inner), path.rstrip("/")
        else:
            p = Path(local_path(path))
            if not p.exists():
                raise BadArgumentError(f"source {path}: no such file or folder")
            is_dir, where = p.is_dir(), str(p.resolve())
        if is_dir:
            inputs.append(_code15(where, opts))
        else:
            inputs.append(hdf5_io.open_generic(where, name, opts))
    return inputs


def _code15(folder: str, opts: ArrayOptions) -> ArrayInput:
    """A CODE-15% folder (a local path or an fsspec URL) as an ArrayInput."""
    from zarr_store import hdf5_io

    fs, inner = url_fs(folder)
    files = [f"{folder}/{base}" for _, base in _code15_parts(fs.ls(inner, detail=False))]
    table = read_exams_csv(f"{folder}/{CODE15_CSV}")
    parts, ids, meta, missing = [], [], [], 0
    attr_leads = None
    for f in files:
        part, part_ids, leads = hdf5_io.open_code15_part(f, opts)
        parts.append(part)
        ids.append(part_ids)
        attr_leads = attr_leads or leads
        rows = []
        for i in part_ids:
            row = table.get(i)
            missing += row is None
            rows.append(row if row is not None else (math.nan, -1, "", ""))
        meta.append(rows)
    name = folder.rstrip("/").rsplit("/", 1)[-1]
    leads, leads_from = resolve_leads(attr_leads, opts.leads, default=LEADS, where=name)
    units = opts.units or "mV"
    fs = float(opts.input_rate or CODE15_RATE)
    return ArrayInput(folder, name, parts, ids, meta, fs, UNITS_UV[units.lower()], units, leads,
                      leads_from, missing)


def resolve_leads(attr: tuple[str, ...] | None, option: tuple[str, ...] | None, default, where: str):
    """(lead names, where they came from): the file's attribute, else the option, else ``default``;
    an attribute and an option that disagree are a BadArgumentError."""
    if attr is not None and option is not None and [a.lower() for a in attr] != [o.lower() for o in option]:
        raise BadArgumentError(f"leads: {where} names its leads {','.join(attr)} in an attribute, "
                               f"got --leads {','.join(option)}")
    if attr is not None:
        return tuple(attr), "attribute"
    if option is not None:
        return tuple(option), "option"
    if default is None:
        raise BadArgumentError(f"leads: {where} does not name its leads; give them (--leads I,II,III,...)")
    return tuple(default), "documented"


def read_exams_csv(path: str) -> dict[str, tuple[float, int, str, str]]:
    """exam_id (as text) -> (age, sex: 0 male / 1 female / -1 unknown, labels, patient id); ``path`` a
    local path or an fsspec URL."""
    import pandas as pd

    fs, inner = url_fs(path)
    if not fs.isfile(inner):
        raise BadArgumentError(f"source {path.rsplit('/', 1)[0]}: no {CODE15_CSV}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in CODE15_COLUMNS if c not in df.columns]
    if missing:
        raise BadArgumentError(f"source {path}: missing column{'s' if len(missing) > 1 else ''} "
                               f"{', '.join(missing)} (expected {', '.join(CODE15_COLUMNS)})")
    true = {"true", "1", "1.0", "yes"}
    flags = np.stack([df[c].str.strip().str.lower().isin(true).to_numpy() for c in CODE15_LABELS], axis=1)
    out = {}
    for k, (exam, age, male, patient) in enumerate(zip(df["exam_id"], df["age"], df["is_male"], df["patient_id"])):
        labels = ",".join(name for name, f in zip(CODE15_LABELS, flags[k]) if f)
        m = male.strip().lower()
        sex = 0 if m in true else 1 if m in ("false", "0", "0.0", "no") else -1
        out[parse_patient_id(exam) or exam.strip()] = (parse_age(age), sex, labels, parse_patient_id(patient))
    return out

