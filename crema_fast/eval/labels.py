"""Label sets from a store's label strings -> a multi-hot ``LabelTable``.

The store keeps each row's labels as the source wrote them (zarr_store.meta_io ``labels``): PTB-XL's
``scp_codes`` dict literal (``"{'NORM': 100.0, 'SR': 0.0}"``, code -> likelihood in %) and CinC's ``#Dx``
comma-separated SNOMED-CT codes (``"164889003,59118001"``).

PTB-XL label sets, built as the PTB-XL benchmark builds them (Strodthoff et al. 2020,
``ecg_ptbxl_benchmarking`` ``utils.compute_label_aggregations``) from ``scp_statements.csv``:

==================  =====================================================================
label set           the classes of a record
==================  =====================================================================
superdiagnostic     ``diagnostic_class`` of its codes with ``diagnostic == 1``: NORM, MI, STTC, CD, HYP
subdiagnostic       ``diagnostic_subclass`` of its codes with ``diagnostic == 1`` (23 in PTB-XL)
diagnostic          its codes with ``diagnostic == 1`` themselves (44)
form                its codes with ``form == 1`` (19)
rhythm              its codes with ``rhythm == 1`` (12)
all                 all its codes (71)
==================  =====================================================================

Likelihoods: every code in the dict counts, whatever its likelihood (0.0 included), as in the benchmark;
``min_likelihood`` > 0 keeps only codes with at least that likelihood. A record is positive for a class
when any of its counted codes maps to it (several codes of one class count once). Records with none of
the set's classes are dropped, as the benchmark drops them (``drop_empty=False`` keeps them as all-zero
rows). Classes: superdiagnostic's five in the order above; the other sets' classes are those present in
the labelled rows, sorted (the benchmark's MultiLabelBinarizer order), keeping those with at least
``min_count`` positives (the benchmark's ``min_samples``).

Other sources: ``snomed``: the codes of the label strings as they are (CinC SNOMED-CT codes; on PTB-XL
rows, its SCP codes); ``csv=PATH``: a user's CSV with a header holding ``record_id`` and ``labels``
columns, labels separated by ``,`` or ``;`` (rows of one record id are joined). Record ids are the
store's ``record_id`` (``crema-fast info`` lists them); a store row takes its record's labels, so a
long record cut into several windows gives several rows with the same labels.
"""

from __future__ import annotations

import ast
import csv as _csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crema_fast.eval.errors import LabelsError

SCP_STATEMENTS = "scp_statements.csv"
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")
# label set -> (scp_statements column that selects codes, column that maps a code to its class or None)
PTBXL_SETS = {
    "superdiagnostic": ("diagnostic", "diagnostic_class"),
    "subdiagnostic": ("diagnostic", "diagnostic_subclass"),
    "diagnostic": ("diagnostic", None),
    "form": ("form", None),
    "rhythm": ("rhythm", None),
    "all": (None, None),
}
OTHER_SETS = ("snomed", "csv")
LABEL_SETS = tuple(PTBXL_SETS) + OTHER_SETS


@dataclass(frozen=True)
class LabelTable:
    """N labelled store rows and their C classes.

    record_ids: str (N,); classes: C names; y: float32 (N, C) multi-hot; rows: int64 (N,) store rows
    (ascending); label_set: its name; strat_fold: int (N,) PTB-XL folds (0 = none) or None when the
    store has no folds; patient_id: str (N,) ("" = unknown) or None when the store has none;
    n_empty: labelled rows dropped for holding none of the classes; source: where the labels came
    from (the scp_statements.csv or CSV path, or "store").
    """

    record_ids: np.ndarray
    classes: tuple[str, ...]
    y: np.ndarray
    rows: np.ndarray
    label_set: str
    strat_fold: np.ndarray | None = None
    patient_id: np.ndarray | None = None
    n_empty: int = 0
    source: str = "store"

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        """Positives per class."""
        return {c: int(n) for c, n in zip(self.classes, self.y.sum(axis=0))}


def _reader(store):
    from zarr_store.reader import StoreReader

    return store if isinstance(store, StoreReader) else StoreReader(store)


def parse_scp_codes(text: str) -> dict[str, float] | None:
    """A PTB-XL ``scp_codes`` literal -> {code: likelihood}; None when ``text`` is not one."""
    text = str(text).strip()
    if not text.startswith("{"):
        return None
    try:
        d = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(d, dict):
        return None
    return {str(k): float(v) if isinstance(v, (int, float)) else 0.0 for k, v in d.items()}


def parse_codes(text: str) -> list[str]:
    """A row's label string -> its codes: PTB-XL dict keys, else comma-separated codes."""
    d = parse_scp_codes(text)
    if d is not None:
        return list(d)
    return [c.strip() for c in str(text).split(",") if c.strip()]


def find_scp_statements(reader) -> str:
    """scp_statements.csv beside the PTB-XL records the store was converted from: each conversion's
    source folder, then its parent and grandparent (converting ``ptbxl/records500`` still finds
    ``ptbxl/scp_statements.csv``). LabelsError saying to pass it when none is found."""
    tried = []
    for conv in reader.attrs.get("conversions", []):
        for src in conv.get("sources", []):
            if "://" in str(src) and not str(src).startswith("file://"):
                continue  # remote sources: the user passes the file
            folder = Path(str(src).removeprefix("file://"))
            for cand in (folder, folder.parent, folder.parent.parent):
                path = cand / SCP_STATEMENTS
                if path.is_file():
                    return str(path)
                tried.append(str(cand))
    where = f" (looked in {', '.join(dict.fromkeys(tried))})" if tried else ""
    raise LabelsError(f"labels: no {SCP_STATEMENTS} beside the store's PTB-XL sources{where}; pass "
                      f"--scp-statements PATH (PTB-XL ships it beside ptbxl_database.csv)")


def read_scp_statements(path: str | os.PathLike) -> dict[str, dict[str, str]]:
    """scp_statements.csv -> {code: {column: value}} (its first, unnamed column is the code)."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"scp_statements: file not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(_csv.reader(fh))
    need = {"diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"}
    header = rows[0] if rows else []
    missing = need - set(header)
    if missing:
        raise LabelsError(f"scp_statements: {path}: expected columns {sorted(need)}, missing {sorted(missing)}")
    return {r[0].strip(): dict(zip(header[1:], r[1:])) for r in rows[1:] if r and r[0].strip()}


def _flag(value: str) -> bool:
    try:
        return float(value) == 1.0
    except ValueError:
        return False


def ptbxl_mapping(statements: dict[str, dict[str, str]], label_set: str) -> dict[str, str]:
    """code -> class for a PTB-XL label set (codes outside the set are absent)."""
    select, target = PTBXL_SETS[label_set]
    out = {}
    for code, row in statements.items():
        if select is not None and not _flag(row.get(select, "")):
            continue
        cls = code if target is None else row.get(target, "").strip()
        if cls and cls.lower() != "nan":
            out[code] = cls
    return out


def read_label_csv(path: str | os.PathLike) -> dict[str, set[str]]:
    """A user CSV with ``record_id`` and ``labels`` columns -> {record id: labels}."""
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"csv: file not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = _csv.DictReader(fh)
        if not reader.fieldnames or not {"record_id", "labels"} <= set(reader.fieldnames):
            raise LabelsError(f"csv: {path}: expected a header with 'record_id' and 'labels' columns, "
                              f"got {reader.fieldnames}")
        out: dict[str, set[str]] = {}
        for row in reader:
            rid = (row["record_id"] or "").strip()
            labels = (row["labels"] or "").replace(";", ",")
            if rid:
                out.setdefault(rid, set()).update(x.strip() for x in labels.split(",") if x.strip())
    return out


def _row_classes(labels: np.ndarray, record_ids: np.ndarray, label_set: str, mapping: dict | None,
                 user: dict | None, min_likelihood: float) -> list[set[str] | None]:
    """Per store row: its classes, or None when the row is not labelled for this set."""
    cache: dict[str, set[str] | None] = {}
    out = []
    for text, rid in zip(labels.tolist(), record_ids.tolist()):
        if user is not None:
            out.append(user.get(str(rid)))
            continue
        got = cache.get(text, False)
        if got is False:
            if mapping is not None:  # PTB-XL sets
                d = parse_scp_codes(text)
                got = None if d is None else {mapping[c] for c, p in d.items()
                                               if c in mapping and p >= min_likelihood}
            else:  # snomed: the codes as they are
                codes = parse_codes(text)
                got = set(codes) if codes else None
            cache[text] = got
        out.append(got)
    return out


def _strings(col: np.ndarray) -> np.ndarray:
    """A patient id column of any dtype -> str (N,), "" where unknown (empty, NaN, negative)."""
    if col.dtype.kind in "fiu":
        f = col.astype(np.float64)
        ok = np.isfinite(f) & (f >= 0)
        return np.array([str(int(v)) if o and float(v).is_integer() else (str(v) if o else "")
                         for v, o in zip(f.tolist(), ok.tolist())], dtype=object)
    return np.array([str(v).strip() for v in col.tolist()], dtype=object)


def load_labels(store, label_set: str, *, csv: str | None = None, scp_statements: str | None = None,
                min_likelihood: float = 0.0, min_count: int = 0, drop_empty: bool = True) -> LabelTable:
    """The label table of ``store`` (a path, URL or StoreReader) for ``label_set`` (module docstring).

    csv: a user CSV of (record_id, labels) (then label_set "csv", or any name to report it under);
    scp_statements: PTB-XL's statement table (default: found beside the store's sources).
    """
    reader = _reader(store)
    if csv is None and label_set not in LABEL_SETS:
        raise LabelsError(f"labels: expected one of {', '.join(LABEL_SETS)}, got {label_set!r}")
    if label_set == "csv" and csv is None:
        raise LabelsError("labels: the 'csv' label set needs --labels-csv PATH (columns record_id, labels)")
    record_ids = reader.column("record_id") if reader.has_column("record_id") else \
        np.array([str(i) for i in range(len(reader))], dtype=object)
    mapping = user = None
    source = "store"
    if csv is not None:
        user, source = read_label_csv(csv), str(csv)
        if not set(map(str, record_ids.tolist())) & set(user):
            raise LabelsError(f"csv: {csv}: none of its record ids is in the store {reader.store} "
                              f"(expected ids such as {record_ids[0]!r}, got e.g. {next(iter(user), None)!r})")
        labels = np.full(len(reader), "", dtype=object)
    else:
        if not reader.has_column("labels"):
            raise LabelsError(f"labels: the store {reader.store} has no 'labels' array (converted without labels)")
        labels = reader.column("labels")
        if not any(str(t).strip() for t in labels.tolist()):
            raise LabelsError(f"labels: the store {reader.store} holds no labels (every row's label string is empty)")
        if label_set in PTBXL_SETS:
            source = scp_statements or find_scp_statements(reader)
            mapping = ptbxl_mapping(read_scp_statements(source), label_set)
    per_row = _row_classes(labels, record_ids, label_set, mapping, user, float(min_likelihood))
    rows = np.array([i for i, c in enumerate(per_row) if c is not None], dtype=np.int64)
    if not len(rows):
        kind = "PTB-XL scp_codes" if mapping is not None else "labels"
        raise LabelsError(f"labels: no row of {reader.store} has {kind} for the label set {label_set!r}")
    sets = [per_row[i] for i in rows.tolist()]
    if label_set == "superdiagnostic" and csv is None:
        classes = SUPERCLASSES
    else:
        counts: dict[str, int] = {}
        for s in sets:
            for c in s:
                counts[c] = counts.get(c, 0) + 1
        classes = tuple(sorted(c for c, n in counts.items() if n >= max(1, min_count)))
    if not classes:
        raise LabelsError(f"labels: no class of {label_set!r} has at least {max(1, min_count)} positives")
    index = {c: j for j, c in enumerate(classes)}
    y = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for i, s in enumerate(sets):
        for c in s:
            j = index.get(c)
            if j is not None:
                y[i, j] = 1.0
    n_empty = 0
    if drop_empty:
        keep = y.any(axis=1)
        n_empty = int((~keep).sum())
        rows, y = rows[keep], y[keep]
    folds = None
    if reader.has_column("strat_fold"):
        f = reader.column("strat_fold")[rows].astype(np.int64)
        folds = f if (f > 0).any() else None
    patients = _strings(reader.column("patient_id")[rows]) if reader.has_column("patient_id") else None
    return LabelTable(record_ids=np.asarray(record_ids[rows]).astype(str), classes=tuple(classes), y=y,
                      rows=rows, label_set=label_set,
                      strat_fold=folds, patient_id=patients, n_empty=n_empty, source=str(source))
