"""``crema-fast info STORE --where COND ... [--export-meta FILE]``: the store's records as a table, filtered.

The table has one row per record (its first window): the store's per-record arrays that are strings
or numbers (``row``, ``record_id``, ``source``, ``patient_id``, ``study_id``, ``ecg_time``, ``labels``,
``age``, ``sex``, ``strat_fold``, ``orig_rate``, those the store has) joined on ``row`` with the tables
beside the store (MIMIC-IV-ECG's machine measurements and report lines, zarr_store.mimic:
``subject_id``, ``cart_id``, ``report``, ``report_0`` .. ``report_17``, ``rr_interval``, ...; empty
where a record has none).

A condition is one of (several ``--where`` must all hold; values are compared as text):

    COLUMN~REGEX              Python regex search, case-insensitive   report~atrial fib(rillation)?
    COLUMN contains TEXT      substring, case-insensitive             "report contains 'atrial fibrillation'"
    COLUMN=VALUE              equal (VALUE empty: the field is empty)  subject_id=10000032, has_measurements=False

TEXT and VALUE may be quoted ('...' or "..."). An unknown column or a bad regex is one BadArgumentError
naming it and the columns there are.
"""

from __future__ import annotations

import re

import numpy as np

from zarr_store.errors import BadArgumentError

_COND = re.compile(r"""^\s*([A-Za-z_]\w*)\s*(?:(~|=)|\s(contains)\s)\s*(.*?)\s*$""", re.S)
_STORE_COLUMNS = ("record_id", "source", "patient_id", "study_id", "ecg_time", "labels", "age", "sex",
                  "strat_fold", "orig_rate")


def parse_condition(text: str) -> tuple[str, str, str]:
    """``COLUMN~REGEX`` / ``COLUMN contains TEXT`` / ``COLUMN=VALUE`` -> (column, op, value)."""
    m = _COND.match(text)
    if m is None:
        raise BadArgumentError(f"--where: expected COLUMN~REGEX, COLUMN=VALUE or COLUMN contains TEXT, got {text!r}")
    column, op, value = m.group(1), m.group(2) or m.group(3), m.group(4)
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1]
    return column, op, value


def record_table(store):
    """The store's records as a pandas DataFrame (see the module docstring)."""
    import pandas as pd

    from zarr_store import mimic
    from zarr_store.reader import StoreReader

    reader = StoreReader(store)
    n = len(reader)
    first = reader.column("window_index") == 0 if reader.has_column("window_index") else np.ones(n, dtype=bool)
    rows = np.flatnonzero(first)
    data = {"row": rows}
    for name in _STORE_COLUMNS:
        if reader.has_column(name):
            data[name] = reader.column(name)[rows]
    df = pd.DataFrame(data)
    side = mimic.read_table(reader.store, reader.attrs) if reader.attrs.get(mimic.ATTR) else None
    if side is not None:
        side = side.drop(columns=[c for c in side.columns if c in df.columns and c != "row"])
        df = df.merge(side, on="row", how="left")
        # records the table does not hold (a non-MIMIC source appended): empty fields, as in the table
        for c in side.columns:
            if c == "has_measurements":
                df[c] = df[c].fillna(False).astype(bool)
            elif c == "n_rows":
                df[c] = df[c].fillna(0).astype(np.int64)
            elif c != "row":
                df[c] = df[c].astype(object).where(df[c].notna(), "")
    return df


def _as_text(col):
    import pandas as pd

    if col.dtype.kind == "f":  # 81.0 -> "81": numbers read the way they were written
        return col.map(lambda v: "" if pd.isna(v) else (f"{v:g}"))
    return col.astype(str)


def select(df, conditions: list[str]):
    """The rows of ``df`` meeting every condition (see the module docstring)."""
    keep = np.ones(len(df), dtype=bool)
    for text in conditions:
        column, op, value = parse_condition(text)
        if column not in df.columns:
            raise BadArgumentError(f"--where: expected a column of this store ({', '.join(df.columns)}), "
                                   f"got {column!r}")
        col = _as_text(df[column])
        if op == "=":
            keep &= (col == value).to_numpy()
        elif op == "contains":
            keep &= col.str.contains(value, case=False, regex=False).to_numpy()
        else:
            try:
                pattern = re.compile(value, re.IGNORECASE)
            except re.error as exc:
                raise BadArgumentError(f"--where: expected a regular expression after '~', got {value!r} ({exc})") from None
            keep &= col.map(lambda v: pattern.search(v) is not None).to_numpy(dtype=bool)
    return df[keep]


def query(store, conditions: list[str], limit: int = 10, export: str | None = None) -> dict:
    """Count the records meeting ``conditions`` (all records when none); the first ``limit`` record ids
    (and their rows); the matching table written to ``export`` (csv, compressed by its extension:
    .csv.gz, ...) when given."""
    if limit < 0:
        raise BadArgumentError(f"--limit: expected a count >= 0, got {limit}")
    df = record_table(store)
    hit = select(df, conditions)
    ids = hit["record_id"] if "record_id" in hit.columns else hit["row"].astype(str)
    out = {"where": list(conditions), "records": len(df), "matches": len(hit),
           "record_ids": ids.head(limit).tolist(), "rows": hit["row"].head(limit).tolist()}
    if export:
        hit.to_csv(export, index=False)
        out["exported"] = {"path": str(export), "records": len(hit), "columns": list(hit.columns)}
    return out


def format_query(q: dict) -> str:
    lines = []
    if q["where"]:
        lines.append("where       " + " AND ".join(q["where"]))
    lines.append(f"matches     {q['matches']:,} of {q['records']:,} records")
    lines += [f"  {rid}  (row {row})" for rid, row in zip(q["record_ids"], q["rows"])]
    if q["matches"] > len(q["record_ids"]):
        lines.append(f"  ... {q['matches'] - len(q['record_ids']):,} more (--limit)")
    if "exported" in q:
        e = q["exported"]
        lines.append(f"exported    {e['records']:,} records x {len(e['columns'])} columns to {e['path']}")
    return "\n".join(lines)
