"""MIMIC-IV-ECG: subject and study ids, acquisition times, machine measurements and report lines.

The layout (PhysioNet's ``mimic-iv-ecg``): a database folder holding ``record_list.csv`` (subject_id,
study_id, file_name, ecg_time, path), ``machine_measurements.csv`` (subject_id, study_id, cart_id,
ecg_time, report_0 .. report_17, bandwidth, filtering, rr_interval, p_onset, ... t_axis) and the
records under ``files/pNNNN/pXXXXXXXX/sYYYYYYYY/YYYYYYYY``. Such a folder is a source root, or a folder
right under one (``data/`` holding ``mimic-iv-ecg/``); ``record_list.csv`` marks it as the database
folder (zarr_store.sources), so record ids are ``files/p1000/p10000032/s40689238/40689238``, the
``path`` column of record_list.csv, whichever of the two was converted.

What a conversion keeps of it:
- per row: ``patient_id`` = subject_id (it wins over header comments), ``study_id`` and ``ecg_time``
  (record_list.csv's, as written there) — store columns; a record missing from record_list.csv gets
  its ids from its path (``p<subject>/s<study>/``) and no time;
- per record: a table beside the store, ``_meta/mimic_measurements.csv.gz`` (named by the group
  attribute ``mimic_measurements``): the record's first store row ``row``, ``n_rows``, source,
  record_id, subject_id, study_id, ecg_time, ``has_measurements``, ``report`` (the non-empty report
  lines joined by "; ", for searching) and every column of machine_measurements.csv as written there
  (its ``ecg_time`` as ``mm_ecg_time``), joined on study_id; a record whose study has no measurements
  row keeps those fields empty (``has_measurements`` False; counted by ``crema-fast info``).

The csv headers are checked before anything is written (a missing column is one BadArgumentError
naming it); the tables are read once the records are known, machine_measurements.csv in chunks and
only for the studies converted (800,000 rows of free text would hold ~2 GB of Python strings). The
table is csv.gz (pandas, no pyarrow dependency), gzip level 1 with mtime 0 so that conversion stays
deterministic; an append rewrites it with the earlier conversions' rows first.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
from dataclasses import dataclass, field

import numpy as np

from zarr_store.errors import BadArgumentError
from zarr_store.paths import is_url, url_fs
from zarr_store.sources import parse_patient_id

RECORD_LIST = "record_list.csv"
MEASUREMENTS = "machine_measurements.csv"
RECORD_LIST_COLUMNS = ("subject_id", "study_id", "ecg_time", "path")
MEASUREMENT_KEYS = ("subject_id", "study_id", "report_0")
TABLE_KEY = "_meta/mimic_measurements.csv.gz"
ATTR = "mimic_measurements"  # group attribute naming the table
STORE_COLUMNS = ("study_id", "ecg_time")  # per-row store columns this module fills
REPORT_SEP = "; "
_PATH_IDS = re.compile(r"(?:^|/)p(\d+)/s(\d+)/[^/]+$")
_CHUNK = 100_000  # machine_measurements.csv rows per pandas chunk


@dataclass
class MimicTable:
    """One MIMIC-IV-ECG database folder (``rel``: its path under the source root, "" = the root) and
    the columns of its csv files (checked). ``measurements`` is None when it has no machine_measurements.csv."""

    folder: str
    rel: str
    measurement_columns: list[str] | None = None
    _records: dict | None = field(default=None, repr=False)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}" if is_url(folder) else os.path.join(folder, name)


def _isfile(path: str) -> bool:
    if is_url(path):
        fs, p = url_fs(path)
        return fs.isfile(p)
    return os.path.isfile(path)


def _open(path: str):
    if is_url(path):
        import fsspec

        return fsspec.open(path, "rb").open()
    return open(path, "rb")


def _header(path: str) -> list[str]:
    with _open(path) as fh:
        line = fh.readline().decode("utf-8-sig")
    return [c.strip() for c in next(csv.reader([line]), [])]


def _check(path: str, got: list[str], needed: tuple[str, ...]) -> None:
    missing = [c for c in needed if c not in got]
    if missing:
        raise BadArgumentError(f"source {path}: expected column(s) {', '.join(missing)} (MIMIC-IV-ECG's "
                               f"{os.path.basename(path)}), got {', '.join(got) or 'no header'}")


def find_tables(roots: list) -> list[dict[str, MimicTable]]:
    """Per source root: MIMIC-IV-ECG database folders (rel -> MimicTable) at the root or right under
    it, their csv headers checked (BadArgumentError naming a missing column)."""
    found = []
    for root in roots:
        root = str(root).rstrip("/") if is_url(root) else str(root)
        tables = {}
        for rel in [""] + _subfolders(root):
            folder = _join(root, rel) if rel else root
            listing = _join(folder, RECORD_LIST)
            if not _isfile(listing):
                continue
            _check(listing, _header(listing), RECORD_LIST_COLUMNS)
            table = MimicTable(folder, rel)
            mm = _join(folder, MEASUREMENTS)
            if _isfile(mm):
                table.measurement_columns = _header(mm)
                _check(mm, table.measurement_columns, MEASUREMENT_KEYS)
            tables[rel] = table
        found.append(tables)
    return found


def _subfolders(root: str) -> list[str]:
    if is_url(root):
        fs, p = url_fs(root)
        return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(p, detail=True)
                      if e.get("type") == "directory" and not e["name"].rstrip("/").endswith("/files"))
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and e.name != "files")
    except OSError:
        return []


def _read_csv(path: str, **kw):
    import pandas as pd

    with _open(path) as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False, **kw)


def _record_list(table: MimicTable) -> dict[str, tuple[str, str, str]]:
    """record_list.csv: path (no extension) -> (subject_id, study_id, ecg_time)."""
    if table._records is None:
        df = _read_csv(_join(table.folder, RECORD_LIST), usecols=list(RECORD_LIST_COLUMNS))
        paths = [re.sub(r"\.(hea|dat)$", "", p.strip().lstrip("./")) for p in df["path"].tolist()]
        table._records = dict(zip(paths, zip(map(parse_patient_id, df["subject_id"].tolist()),
                                             map(parse_patient_id, df["study_id"].tolist()),
                                             [t.strip() for t in df["ecg_time"].tolist()])))
    return table._records


def _measurements(table: MimicTable, studies: set[str]):
    """The rows of machine_measurements.csv whose study_id is in ``studies`` (first row per study),
    indexed by study_id; None without the file."""
    import pandas as pd

    if table.measurement_columns is None:
        return None
    parts = []
    with _open(_join(table.folder, MEASUREMENTS)) as fh:
        for chunk in pd.read_csv(fh, dtype=str, keep_default_na=False, chunksize=_CHUNK):
            ids = chunk["study_id"].map(parse_patient_id)
            keep = ids.isin(studies)
            if keep.any():
                parts.append(chunk[keep].assign(study_id=ids[keep]))
    cols = table.measurement_columns
    df = pd.concat(parts) if parts else pd.DataFrame(columns=cols)
    return df.drop_duplicates("study_id").set_index("study_id")


@dataclass
class MimicJoin:
    """What a conversion keeps of MIMIC-IV-ECG: ``columns`` (store column -> per-record values, in
    plan order) and ``table`` (a DataFrame, one row per MIMIC record; see the module docstring)."""

    columns: dict[str, list[str]]
    table: object


def join(plan, tables: list[dict[str, MimicTable]]) -> MimicJoin | None:
    """Ids, times and measurements of the MIMIC-IV-ECG records among ``plan.records`` (a
    zarr_store.plan.Plan after its run); sets their patient_id to the subject id. None when no
    source is MIMIC-IV-ECG."""
    if not any(tables):
        return None
    import pandas as pd

    n = len(plan.records)
    study, time = [""] * n, [""] * n
    hits: dict[int, list] = {}  # id(table) -> [(k, subject, study, time, table)]
    for k, r in enumerate(plan.records):
        rid = plan.record_ids[k]
        if not (tables[r.source] and r.record_id.endswith(rid)):
            continue
        table = tables[r.source].get(r.record_id[: len(r.record_id) - len(rid)].rstrip("/"))
        if table is None:
            continue
        hit = _record_list(table).get(rid)
        if hit is None:  # not listed: the ids from the path, no time
            m = _PATH_IDS.search(rid)
            hit = (parse_patient_id(m.group(1)), parse_patient_id(m.group(2)), "") if m else ("", "", "")
        subject, study[k], time[k] = hit
        if subject:
            plan.records[k] = r.with_meta(r.age, r.sex, r.labels, r.strat_fold, subject)
        hits.setdefault(id(table), [table, []])[1].append(k)
    frames = []
    for table, ks in hits.values():
        base = pd.DataFrame({
            "row": [plan.first_rows[k] for k in ks], "n_rows": [plan.records[k].n_windows for k in ks],
            "source": [plan.sources[k] for k in ks], "record_id": [plan.record_ids[k] for k in ks],
            "subject_id": [plan.records[k].patient_id for k in ks], "study_id": [study[k] for k in ks],
            "ecg_time": [time[k] for k in ks]})
        mm = _measurements(table, set(base["study_id"]))
        if mm is None:
            base["has_measurements"] = False
            base["report"] = ""
        else:
            mm = mm.drop(columns=["subject_id"], errors="ignore").rename(columns={"ecg_time": "mm_ecg_time"})
            base["has_measurements"] = base["study_id"].isin(mm.index)
            reports = [c for c in mm.columns if re.fullmatch(r"report_\d+", c)]
            reports.sort(key=lambda c: int(c.split("_")[1]))
            lines = zip(*(mm[c].str.strip().tolist() for c in reports))  # ~20x faster than apply(axis=1)
            joined = pd.Series([REPORT_SEP.join(v for v in row if v) for row in lines], index=mm.index, dtype=object)
            base["report"] = base["study_id"].map(joined).fillna("")
            base = base.join(mm, on="study_id")
            base[list(mm.columns)] = base[list(mm.columns)].fillna("")
        frames.append(base)
    if not frames:
        return MimicJoin({}, None)
    return MimicJoin({"study_id": study, "ecg_time": time}, pd.concat(frames, ignore_index=True).sort_values("row"))


def write_table(io, joined: MimicJoin | None, start: int) -> None:
    """Write the measurements table (earlier conversions' rows below ``start`` kept, first) and name it
    in the group's attributes. Idempotent: a re-run of a killed conversion writes the same bytes."""
    if joined is None or joined.table is None:
        return
    import pandas as pd

    from zarr_store.meta_io import read_json, template, write_node

    new = joined.table
    old = read_table_io(io)
    if old is not None:
        new = pd.concat([old[old["row"] < start], new], ignore_index=True)
    text = new.to_csv(index=False, lineterminator="\n").encode("utf-8")
    if not io.exists("_meta/zarr.json"):  # a group of its own, so that zarr's listing does not warn
        write_node(io, "_meta", template("group"), attributes={"about": "tables beside the store"})
    io.write(TABLE_KEY, gzip.compress(text, compresslevel=1, mtime=0))
    group = read_json(io, "zarr.json")
    if group["attributes"].get(ATTR) != TABLE_KEY:
        group["attributes"][ATTR] = TABLE_KEY
        write_node(io, "", group)


def _parse_table(data: bytes, columns=None):
    import pandas as pd

    df = pd.read_csv(io.BytesIO(gzip.decompress(data)), dtype=str, keep_default_na=False, usecols=columns)
    for name in ("row", "n_rows"):
        if name in df.columns:
            df[name] = df[name].astype(np.int64)
    if "has_measurements" in df.columns:
        df["has_measurements"] = df["has_measurements"] == "True"
    return df


def read_table_io(io):
    data = io.read(TABLE_KEY)
    return None if data is None else _parse_table(data)


def read_table(store, attrs: dict | None = None, columns: list[str] | None = None):
    """The MIMIC-IV-ECG measurements table of ``store`` (a path or URL) as a DataFrame (ids and
    measurements as str, ``row``/``n_rows`` int64, ``has_measurements`` bool), only ``columns`` when
    given; None when it has none."""
    from zarr_store.shard_writer import StoreIO

    key = (attrs or {}).get(ATTR, TABLE_KEY)
    data = StoreIO(str(store)).read(key)
    return None if data is None else _parse_table(data, columns)
