"""What a source folder holds: its records (RECORDS files or a walk), the database each record belongs
to (which names it in the store), and metadata beside the signals (header comments, PTB-XL's
``ptbxl_database.csv``).

A record's database folder, which gives its ``source`` name and the folder its ``record_id`` is
relative to, is the first of:
1. the nearest folder, from the record's own folder up to the source root, that holds a ``RECORDS``,
   ``ANNOTATORS``, ``ptbxl_database.csv`` or ``record_list.csv`` (MIMIC-IV-ECG) file or PTB-XL's rate
   folders (``records100``, ``records500``);
2. the folder of a ``ptbxl_database.csv`` up to two levels above the root (``ptbxl/records500``
   converted on its own);
3. the top-level folder under the root that holds the record;
4. the root itself.
So converting ``data/`` (holding ``ptbxl/`` and ``other/mitdb/`` ...) names records "ptbxl" and
"mitdb", as converting ``data/ptbxl`` or ``data/other`` does, with the same record ids: a record is
the same ``(source, record_id)`` whichever folder was converted, which is how re-runs with overlapping
sources skip what the store holds. The PTB-XL table of a record is the nearest ``ptbxl_database.csv``
from its folder up to the root, else one up to two levels above the root.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from zarr_store.paths import cat_url, is_url, url_fs

# record_list.csv: MIMIC-IV-ECG (zarr_store.mimic), so that its ids are files/p.../s.../NNN, not p.../s.../NNN of "files"
MARKER_FILES = ("RECORDS", "ANNOTATORS", "ptbxl_database.csv", "record_list.csv")
RATE_FOLDERS = ("records100", "records500")  # PTB-XL's layout: their parent is the database
PTBXL_CSV = "ptbxl_database.csv"


@dataclass
class RecordMeta:
    """Per-record metadata: age in years (NaN unknown), sex (-1 unknown, 0 male, 1 female), labels
    ("" unknown), strat_fold (0 unknown), patient_id ("" unknown: kept so that splits without folds can
    be patient-disjoint)."""

    age: float = math.nan
    sex: int = -1
    labels: str = ""
    strat_fold: int = 0
    patient_id: str = ""


_KV_RE = re.compile(r"^([A-Za-z][A-Za-z _]*?)\s*:\s*(.*)$")
# Header comment keys that name the patient (lower case, "_" read as " "); CinC 2021's headers have none.
_PATIENT_KEYS = ("patient", "patient id", "patientid", "subject", "subject id")
_MITDB_RE = re.compile(r"^(\d+)\s+([MFmf])\b")


def _sex(text: str) -> int:
    t = text.strip().lower()
    return 0 if t in ("m", "male") else 1 if t in ("f", "female") else -1


def parse_age(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        return math.nan
    return v if math.isfinite(v) and v >= 0 else math.nan


def parse_patient_id(text: str | None) -> str:
    """A patient id as stored: stripped, "" unknown; a whole number written as a float (PTB-XL's
    ``15709.0``) as the integer (``15709``), so that ids read the same whichever table wrote them."""
    t = (text or "").strip()
    try:
        v = float(t)
    except ValueError:
        return t
    if not math.isfinite(v):
        return ""
    return str(int(v)) if v == int(v) else t


def comment_meta(comments: tuple[str, ...] | list[str]) -> RecordMeta:
    """Metadata from header comments: CinC ``#Age: 85`` / ``#Sex: Male`` / ``#Dx: a,b``, PTB's
    ``# age: 81`` / ``# sex: female``, MIT-BIH's leading ``# 69 M ...``, and a patient id where a
    header names one (``# Patient ID: 17``, ``# subject_id: ...``; see _PATIENT_KEYS)."""
    meta = RecordMeta()
    for c in comments:
        m = _KV_RE.match(c)
        if m:
            key, value = m.group(1).strip().lower(), m.group(2).strip()
            if key == "age":
                meta.age = parse_age(value)
            elif key in ("sex", "gender"):
                meta.sex = _sex(value)
            elif key == "dx":
                meta.labels = ",".join(p.strip() for p in value.split(",") if p.strip())
            elif key.replace("_", " ") in _PATIENT_KEYS:
                meta.patient_id = parse_patient_id(value)
        elif math.isnan(meta.age) and meta.sex < 0:
            m = _MITDB_RE.match(c)
            if m:
                meta.age, meta.sex = parse_age(m.group(1)), _sex(m.group(2))
    return meta


class PtbxlRow(NamedTuple):
    """One ptbxl_database.csv row's fields (a NamedTuple: PTB-XL's table has ~22,000 rows)."""

    labels: str
    strat_fold: int
    age: float
    sex: int
    patient_id: str


@dataclass
class PtbxlTable:
    """``ptbxl_database.csv``: rows by record path relative to the csv's folder (no extension);
    ``low_rate`` maps each ``filename_lr`` to the ``filename_hr`` of the same ecg_id."""

    root: str
    rows: dict[str, PtbxlRow] = field(default_factory=dict)
    low_rate: dict[str, str] = field(default_factory=dict)

    def relative(self, record_path: str | os.PathLike) -> str | None:
        """``record_path`` relative to the csv's folder (posix), None when outside it."""
        if is_url(record_path):
            path, root = str(record_path), self.root.rstrip("/") + "/"
        else:  # absolute, not resolved: a folder of symlinks to records still matches its csv
            path, root = os.path.abspath(record_path), self.root + os.sep
        if not path.startswith(root):
            return None
        return path[len(root):].replace(os.sep, "/")

    def lookup(self, record_path: str | os.PathLike) -> PtbxlRow | None:
        rel = self.relative(record_path)
        return None if rel is None else self.rows.get(rel)


def find_ptbxl_table(source, levels: int = 2) -> PtbxlTable | None:
    """Load ``ptbxl_database.csv`` from ``source`` or one of its ``levels`` parents (so that
    converting ``ptbxl/records500`` still finds ``ptbxl/ptbxl_database.csv``); None if absent."""
    if is_url(source):
        folder = str(source).rstrip("/")
        for _ in range(levels + 1):
            table = load_ptbxl_table(folder)
            if table is not None:
                return table
            if folder.split("://", 1)[1].strip("/") == "":
                break
            folder = folder.rsplit("/", 1)[0]
        return None
    folder = Path(os.path.abspath(source))
    for _ in range(levels + 1):
        table = load_ptbxl_table(str(folder))
        if table is not None:
            return table
        folder = folder.parent
    return None


def load_ptbxl_table(folder: str) -> PtbxlTable | None:
    """The ``ptbxl_database.csv`` of ``folder`` (a local path or URL), None when it has none."""
    if is_url(folder):
        fs, path = url_fs(f"{folder}/{PTBXL_CSV}")
        return _parse_ptbxl(fs.cat_file(path).decode("utf-8"), folder) if fs.isfile(path) else None
    path = os.path.join(folder, PTBXL_CSV)
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    rows, low_rate = _parsed_ptbxl(os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                                   st.st_ctime_ns)
    return PtbxlTable(folder, rows, low_rate)


@functools.lru_cache(maxsize=8)
def _parsed_ptbxl(path: str, *identity: int) -> tuple[dict, dict]:
    """(rows, low_rate) of a local csv, parsed once per content as the file system knows it
    (``identity``: device, inode, size, mtime and ctime, which no copy that keeps the mtime keeps
    too): sources given as sub-folders of one archive (``records500/00000``,
    ``records500/01000``, ...) each find the same csv above them: ~4.3 µs a row measured (on 500
    rows), so ~0.09 s for PTB-XL's 21,837, once per source. Shared between tables: read-only."""
    with open(path, encoding="utf-8") as fh:
        table = _parse_ptbxl(fh.read(), "")
    return table.rows, table.low_rate


def _parse_ptbxl(text: str, root: str) -> PtbxlTable:
    table = PtbxlTable(root)
    # csv.reader and column positions, not DictReader: a dict per row of 28 columns costs 2x.
    rows = csv.reader(io.StringIO(text, newline=""))
    columns = {name: i for i, name in enumerate(next(rows, []))}  # a repeated name: the last one, as DictReader
    get = [columns.get(k) for k in ("scp_codes", "strat_fold", "age", "sex", "patient_id", "filename_hr",
                                    "filename_lr")]
    for row in rows:
        if not row:
            continue  # DictReader skips empty lines too
        codes, fold, age, sex, patient, hr, lr = [row[i] if i is not None and i < len(row) else "" for i in get]
        fold = fold or "0"
        entry = PtbxlRow(codes.strip(), int(float(fold)) if fold.strip() else 0, parse_age(age or "nan"),
                         _ptbxl_sex(sex), parse_patient_id(patient))
        hr, lr = hr.strip(), lr.strip()
        for name in (hr, lr):
            if name:
                table.rows[name] = entry
        if hr and lr:
            table.low_rate[lr] = hr
    return table


def _ptbxl_sex(text: str | None) -> int:
    try:
        v = int(float(text or ""))
    except ValueError:
        return -1
    return v if v in (0, 1) else -1


@dataclass(frozen=True)
class Located:
    """Where a record belongs: its ``source`` name, its id relative to the database folder, the PTB-XL
    table that may describe it and its path relative to that table's folder (None, None: no table)."""

    source: str
    record_id: str
    table: PtbxlTable | None = None
    table_name: str | None = None

    def ptbxl_row(self) -> PtbxlRow | None:
        return None if self.table is None else self.table.rows.get(self.table_name)


class SourceTree:
    """Database folders and PTB-XL tables of one source root (see the module docstring for the rule).
    Folder checks are cached: ``locate`` costs a dictionary lookup per record after the first record of
    each folder."""

    def __init__(self, root):
        self.root = str(root).rstrip("/") if is_url(root) else os.path.abspath(root)
        self.name = self.root.rstrip("/").rsplit("/", 1)[-1]
        self._url = is_url(root)
        self._dirs: dict[str, tuple[str | None, str | None]] = {}  # rel dir -> (database dir, csv dir)
        self._tables: dict[str, PtbxlTable | None] = {}
        self._located_dirs: dict[str, tuple] = {}  # rel dir -> (database dir, csv dir, table)
        if self._url:
            scheme, _, inside = self.root.partition("://")
            parent = f"{scheme}://{inside.rsplit('/', 1)[0]}" if "/" in inside.strip("/") else None
        else:
            parent = os.path.dirname(self.root) if os.path.dirname(self.root) != self.root else None
        # rule 2 (the root's own csv is found by rule 1)
        self._above = find_ptbxl_table(parent, levels=1) if parent is not None else None
        # the root's path inside the folder of that csv, with a trailing "/"
        self._above_prefix = self._above.relative(self.root) + "/" if self._above is not None else ""

    def _join(self, rel: str) -> str:
        if not rel:
            return self.root
        return f"{self.root}/{rel}" if self._url else os.path.join(self.root, rel)

    def _markers(self, rel: str) -> tuple[bool, bool]:
        """(holds a database marker, holds ptbxl_database.csv)."""
        folder = self._join(rel)
        if self._url:
            fs, folder = url_fs(folder)
            isfile, isdir, join = fs.isfile, fs.isdir, posixpath.join
        else:
            isfile, isdir, join = os.path.isfile, os.path.isdir, os.path.join
        csv_here = isfile(join(folder, PTBXL_CSV))
        marked = (csv_here or any(isfile(join(folder, n)) for n in MARKER_FILES if n != PTBXL_CSV)
                  or any(isdir(join(folder, n)) for n in RATE_FOLDERS))
        return marked, csv_here

    def _folder(self, rel: str) -> tuple[str | None, str | None]:
        hit = self._dirs.get(rel)
        if hit is None:
            parent = (None, None) if rel == "" else self._folder(posixpath.dirname(rel))
            marked, csv_here = self._markers(rel)
            hit = (rel if marked else parent[0], rel if csv_here else parent[1])
            self._dirs[rel] = hit
        return hit

    def _table(self, rel: str | None) -> PtbxlTable | None:
        if rel is None:
            return self._above
        if rel not in self._tables:
            self._tables[rel] = load_ptbxl_table(self._join(rel))
        return self._tables[rel]

    def locate(self, name: str) -> Located:
        """Where the record ``name`` (a path relative to the root, posix, no extension) belongs. Its
        source and record id are names as the file system gave them, escaped where they are not UTF-8
        (``b"\\xff"`` in a file name reads as the four characters ``\\xff``): the store's strings are
        UTF-8, and one such name once stopped a whole conversion."""
        loc = self._locate(name)
        if not (loc.source.isascii() and loc.record_id.isascii()):
            loc = Located(escape_name(loc.source), escape_name(loc.record_id), loc.table, loc.table_name)
        return loc

    def _locate(self, name: str) -> Located:
        folder = posixpath.dirname(name)
        hit = self._located_dirs.get(folder)
        if hit is None:  # once per folder
            db, csv_dir = self._folder(folder)
            hit = self._located_dirs[folder] = (db, csv_dir, self._table(csv_dir))
        db, csv_dir, table = hit
        if table is None:
            table_name = None
        elif csv_dir is None:  # the csv above the root
            table_name = self._above_prefix + name
        else:
            table_name = name[len(csv_dir) + 1:] if csv_dir else name
        if db is not None:  # rule 1
            if db == "":
                return Located(self.name, name, table, table_name)
            return Located(db.rsplit("/", 1)[-1], name[len(db) + 1:], table, table_name)
        if self._above is not None:  # rule 2: the csv's folder, above the root
            return Located(self._above.root.rstrip("/").rsplit("/", 1)[-1], table_name, table, table_name)
        if "/" in name:  # rule 3
            top, rest = name.split("/", 1)
            return Located(top, rest, table, table_name)
        return Located(self.name, name, table, table_name)  # rule 4


def escape_name(name: str) -> str:
    """``name`` (a str from the file system, undecodable bytes as surrogates) as valid UTF-8 text: those
    bytes written as ``\\xNN``, everything else as it was."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def discover_records(source: Path) -> list[str]:
    """Record names (paths relative to ``source``, posix, no extension), sorted. A ``RECORDS`` file in
    ``source`` is followed (entries ending in '/' name folders with their own RECORDS); otherwise the
    tree is walked for ``.hea`` files. A record listed in RECORDS whose header is missing is kept, so
    that conversion reports it."""
    names: set[str] = set()
    if is_url(source):
        fs, root = url_fs(str(source).rstrip("/"))
        root = root.rstrip("/")
        if fs.isfile(f"{root}/RECORDS"):
            _follow_records(source, "", names, depth=0)
        else:
            for f in fs.find(root):
                rel = f[len(root):].lstrip("/")
                if rel.endswith(".hea") and not rel.rsplit("/", 1)[-1].startswith("."):
                    names.add(rel[:-4])
        return sorted(names)
    source = Path(source)
    if (source / "RECORDS").is_file():
        _follow_records(source, "", names, depth=0)
    else:
        top = str(source)
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            # strings, not pathlib: this runs once per file
            rel = os.path.relpath(dirpath, top).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            # A folder named x.hea is a record whose header cannot be read: kept, so that the report
            # lists it instead of the record vanishing
            for f in filenames + [d for d in dirnames if d.endswith(".hea")]:
                if f.endswith(".hea") and not f.startswith("."):
                    names.add(prefix + f[:-4])
    return sorted(names)


def _posix_name(name: str) -> str:
    """``name`` as pathlib would spell it (``a//b``, ``./a``, ``a/./b``, a trailing ``/``:
    normalised), without making a Path for the names that need none (~5 µs each, 0.1 s of 20,000)."""
    if "//" in name or name.startswith("./") or "/./" in name or name.endswith(("/", "/.")) or name == ".":
        return Path(name).as_posix()
    return name


def _follow_records(source, prefix: str, names: set[str], depth: int) -> None:
    if is_url(source):
        text = cat_url(f"{str(source).rstrip('/')}/{prefix}RECORDS").decode("latin-1")
    else:
        text = (Path(source) / prefix / "RECORDS").read_text(encoding="latin-1")
    entries = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    for entry in entries:
        if entry.endswith("/"):
            sub = f"{prefix}{entry}"
            if depth < 4:
                try:
                    _follow_records(source, sub, names, depth + 1)
                except FileNotFoundError:
                    pass  # a folder without its own RECORDS
            continue
        names.add(_posix_name(prefix + entry))
