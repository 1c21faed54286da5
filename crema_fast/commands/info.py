"""``crema-fast info STORE``: what a store holds — counts, sources, rate, window, lead coverage, labels,
patients, size on disk, compression ratio and the conversion's quarantine report.

``describe(store) -> dict`` gathers the facts (tests and tools use it); ``run`` prints them. ``--verify``
also reads every shard index and chunk (zarr_store.verify: crc32c, truncation, missing files) and every
metadata array, lists bad ones by file and rows, and exits 1 when any is bad. ``--where COND`` and
``--export-meta FILE`` print, instead, the records meeting conditions on their metadata (MIMIC-IV-ECG's
reports and measurements among it) and write it as csv (crema_fast.commands._where). Labels
are counted once per record (its first window): PTB-XL's ``scp_codes`` are dict literals whose keys
are the codes, CinC's ``Dx`` are comma-separated SNOMED codes.
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections import Counter

import numpy as np

# Where the converter keeps its report of skipped records and its unfinished-conversion marker.
from zarr_store.convert import PENDING_KEY, REPORT_KEY
from zarr_store.errors import BadArgumentError
from zarr_store.reader import StoreReader

_DICT_KEY = re.compile(r"""['"]([^'"]+)['"]\s*:""")


def add_arguments(parser) -> None:
    parser.add_argument("store", help="the store: a local path or an fsspec URL (memory://, s3://, ...)")
    parser.add_argument("--top", type=int, default=15, help="labels to list (default 15)")
    parser.add_argument("--json", action="store_true", help="print the facts as one JSON object")
    parser.add_argument("--verify", action="store_true",
                        help="also read every shard index and chunk (checksums, truncation); exit 1 when any is bad")
    # --where / --export-meta: crema_fast.commands._where (the grammar is in its docstring)
    parser.add_argument("--where", action="append", default=[], metavar="COND",
                        help="only records meeting COND: COLUMN~REGEX (case-insensitive), COLUMN=VALUE or "
                             "'COLUMN contains TEXT'; repeat to AND; prints the count and the first record ids")
    parser.add_argument("--limit", type=int, default=10, help="record ids --where prints (default 10)")
    parser.add_argument("--export-meta", metavar="FILE", default=None,
                        help="write the records' metadata (store columns, MIMIC-IV-ECG measurements and "
                             "reports), filtered by --where, as csv (.csv.gz compressed)")


def parse_labels(text: str) -> list[str]:
    """A row's label string -> codes: PTB-XL dict literal keys, else comma-separated codes."""
    text = str(text).strip()
    if not text:
        return []
    if text.startswith("{"):
        keys = _DICT_KEY.findall(text)  # 10x faster than literal_eval; same keys on PTB-XL's literals
        if keys:
            return keys
        try:
            return [str(k) for k in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            return [text]
    return [code.strip() for code in text.split(",") if code.strip()]


def _sizes(reader: StoreReader) -> tuple[int, int]:
    """(bytes of the whole store, bytes of the signals array) on disk or in the object store."""
    if "://" in reader.store and not reader.store.startswith("file://"):
        import fsspec

        fs, root = fsspec.url_to_fs(reader.store)
        return int(fs.du(root, total=True)), int(fs.du(f"{root.rstrip('/')}/signals", total=True))
    total = signals = 0
    for folder, _, files in os.walk(reader.store):
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        total += size
        if os.path.relpath(folder, reader.store).split(os.sep)[0] == "signals":
            signals += size
    return total, signals


def _report(reader: StoreReader) -> dict | None:
    """Counts of the quarantine report (reason -> skipped records), if the store has one.

    The converter writes ``STORE/_convert/quarantine.json`` ({"records": [...], "counts": {...}}) and
    names it in the group attribute ``quarantine``.
    """
    import fsspec

    base = reader.store.rstrip("/")
    keys = [reader.attrs["quarantine"]] if reader.attrs.get("quarantine") else []
    for key in keys + [REPORT_KEY]:
        fs, path = fsspec.url_to_fs(f"{base}/{key}")
        if not fs.isfile(path):
            continue
        data = json.loads(fs.cat_file(path))
        counts = data.get("counts")
        if counts is None:
            counts = Counter(str(r.get("reason", "unknown")) for r in data.get("records", []))
        counts = {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}
        return {"path": f"{base}/{key}", "counts": counts}
    return None


def _mimic(reader: StoreReader) -> dict | None:
    """MIMIC-IV-ECG's measurements table beside the store (zarr_store.mimic): records, studies, those
    without a machine_measurements row; None when the store has none."""
    from zarr_store import mimic

    if not reader.attrs.get(mimic.ATTR):
        return None
    table = mimic.read_table(reader.store, reader.attrs, columns=["study_id", "has_measurements"])
    if table is None:
        return {"path": f"{reader.store.rstrip('/')}/{reader.attrs[mimic.ATTR]}", "missing": True}
    return {"path": f"{reader.store.rstrip('/')}/{reader.attrs[mimic.ATTR]}", "records": len(table),
            "studies": int(table["study_id"].replace("", None).nunique()),
            "without_measurements": int((~table["has_measurements"]).sum())}


def _unfinished(reader: StoreReader) -> bool:
    """Whether a conversion into this store was interrupted (re-running it resumes)."""
    import fsspec

    fs, path = fsspec.url_to_fs(f"{reader.store.rstrip('/')}/{PENDING_KEY}")
    return bool(fs.isfile(path))


def first_rows(reader: StoreReader, has: dict) -> np.ndarray:
    """bool (N,): each record's first window (labels and folds are counted once per record)."""
    if has["window_index"]:
        return reader.column("window_index") == 0
    return np.ones(len(reader), dtype=bool)


def describe(store, *, top: int = 15) -> dict:
    """The facts ``info`` prints, as a dict (JSON-serializable)."""
    reader = StoreReader(store)
    n = len(reader)
    facts: dict = {"store": reader.store, "rows": n, "rate": reader.rate, "window": reader.window,
                   "window_s": reader.window / reader.rate if reader.rate else None,
                   "format_version": reader.attrs.get("format_version"), "units": reader.attrs.get("units"),
                   "conversions": len(reader.attrs.get("conversions", [])), "read_path": reader.path_kind}
    has = {name: reader.has_column(name) for name in
           ("record_id", "source", "window_index", "lead_mask", "labels", "valid_length")}
    source = reader.column("source") if has["source"] else np.full(n, "?", dtype=object)
    if has["record_id"]:
        facts["records"] = len(set(zip(source.tolist(), reader.column("record_id").tolist())))
    elif has["window_index"]:
        facts["records"] = int((reader.column("window_index") == 0).sum())
    else:
        facts["records"] = n
    facts["sources"] = {str(k): v for k, v in Counter(source.tolist()).most_common()}
    if has["lead_mask"] and n:
        coverage = reader.column("lead_mask").mean(axis=0)
        facts["lead_coverage"] = {lead: float(c) for lead, c in zip(reader.leads or range(12), coverage)}
    if reader.has_column("orig_rate") and n:
        rates = Counter(reader.column("orig_rate")[first_rows(reader, has)].tolist())
        facts["orig_rates"] = {f"{k:g}": v for k, v in sorted(rates.items())}
    if has["valid_length"] and n:
        facts["padded_rows"] = int((reader.column("valid_length") < reader.window).sum())
    if reader.has_column("strat_fold") and n:
        folds = Counter(reader.column("strat_fold")[first_rows(reader, has)].tolist())
        if set(folds) != {0}:
            facts["strat_folds"] = {str(k): v for k, v in sorted(folds.items())}
    if has["labels"]:
        labels = reader.column("labels")
        first = first_rows(reader, has)
        counter: Counter = Counter()
        texts = Counter(labels[first].tolist())  # far fewer distinct strings than records
        for text, count in texts.items():
            for code in set(parse_labels(text)):
                counter[code] += count
        facts["labelled_records"] = sum(c for text, c in texts.items() if str(text).strip())
        facts["labels"] = dict(counter.most_common(top))
        facts["distinct_labels"] = len(counter)
    # None: a store converted before patient ids were kept (info still describes it).
    facts["patients"] = len(set(reader.patient_ids().tolist()) - {""}) if reader.has_column("patient_id") else None
    if facts["patients"] is not None:
        facts["rows_without_patient"] = int((reader.patient_ids() == "").sum())
    total, signals = _sizes(reader)
    raw = n * int(np.prod(reader.shape[1:])) * reader.dtype.itemsize
    facts.update(bytes_on_disk=total, signal_bytes=signals, raw_signal_bytes=raw,
                 compression_ratio=raw / signals if signals else None)
    facts["mimic"] = _mimic(reader)
    facts["quarantine"] = _report(reader)
    facts["unfinished_conversion"] = _unfinished(reader)
    return facts


def _mb(nbytes: int) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def format_facts(f: dict) -> str:
    """The human-readable report of ``describe``'s dict."""
    lines = [f"store       {f['store']}  (format {f['format_version']}, {f['conversions']} conversion(s), "
             f"read path: {f['read_path']})",
             f"rows        {f['rows']:,}  from {f['records']:,} records",
             f"rate        {f['rate']} Hz, window {f['window']} samples"
             + (f" ({f['window_s']:g} s)" if f["window_s"] else "")
             + (f", {f['padded_rows']:,} rows zero-padded" if "padded_rows" in f else ""),
             "sources     " + ", ".join(f"{k}: {v:,}" for k, v in f["sources"].items())]
    if "orig_rates" in f:
        lines.append("recorded at " + ", ".join(f"{k} Hz: {v:,}" for k, v in f["orig_rates"].items())
                     + " records")
    if "lead_coverage" in f:
        lines.append("leads       " + " ".join(f"{k} {v:.0%}" for k, v in f["lead_coverage"].items())
                     + "  (share of rows)")
    if "labels" in f:
        lines.append(f"labels      {f['labelled_records']:,} labelled records, {f['distinct_labels']} distinct; top: "
                     + ", ".join(f"{k} {v:,}" for k, v in f["labels"].items()))
    if f["patients"] is None:
        lines.append("patients    patient ids: not stored (converted before they were kept; re-convert to get them)")
    else:
        lines.append(f"patients    {f['patients']:,} distinct patient ids"
                     + (f"; {f['rows_without_patient']:,} rows without one" if f["rows_without_patient"] else ""))
    if "strat_folds" in f:
        lines.append("folds       " + ", ".join(f"{k}: {v:,}" for k, v in f["strat_folds"].items())
                     + "  (strat_fold per record, 0 = unknown)")
    ratio = f"{f['compression_ratio']:.2f}x" if f["compression_ratio"] else "n/a"
    lines.append(f"size        {_mb(f['bytes_on_disk'])} on disk; signals {_mb(f['signal_bytes'])} "
                 f"(raw int16 {_mb(f['raw_signal_bytes'])}, compression {ratio})")
    m = f.get("mimic")
    if m is not None:
        lines.append(f"mimic       table missing: {m['path']}" if m.get("missing") else
                     f"mimic       {m['records']:,} MIMIC-IV-ECG records, {m['studies']:,} studies; "
                     f"{m['without_measurements']:,} without a machine_measurements row — {m['path']} "
                     "(query: --where, --export-meta)")
    q = f["quarantine"]
    if q is None:
        lines.append("quarantine  no report found")
    else:
        skipped = sum(q["counts"].values())
        detail = ", ".join(f"{k}: {v}" for k, v in q["counts"].items())
        lines.append(f"quarantine  {skipped} skipped record(s)" + (f" ({detail})" if detail else "")
                     + f" — {q['path']}")
    if f["unfinished_conversion"]:
        lines.append("warning     a conversion into this store did not finish: run the same convert again to resume")
    return "\n".join(lines)


def run(args) -> int:
    if args.top < 0:
        raise BadArgumentError(f"--top: expected a count >= 0, got {args.top}")
    if args.where or args.export_meta:
        from crema_fast.commands._where import format_query, query

        q = query(args.store, args.where, limit=args.limit, export=args.export_meta)
        print(json.dumps(q, indent=2) if args.json else format_query(q))
        return 0
    facts = describe(args.store, top=args.top)
    if not args.verify:
        print(json.dumps(facts, indent=2) if args.json else format_facts(facts))
        return 0
    from zarr_store.verify import verify_store

    v = verify_store(args.store)
    facts["verify"] = {"ok": v.ok, "shards": v.shards, "chunks": v.chunks, "arrays": v.arrays,
                       "chunk_crc32c": v.chunk_crc,
                       "problems": [{"file": p.file, "rows": list(p.rows), "reason": p.reason} for p in v.problems]}
    print(json.dumps(facts, indent=2) if args.json else format_facts(facts) + "\n" + format_verify(v))
    return 0 if v.ok else 1


def format_verify(v) -> str:
    crc = "each chunk's crc32c checked" if v.chunk_crc else "chunks without crc32c (older store): decoded only"
    head = (f"verify      {v.shards} shard file(s), {v.chunks:,} chunks, {v.arrays} metadata arrays read; {crc}: "
            + ("all good" if v.ok else f"{len(v.problems)} bad"))
    return "\n".join([head] + [f"  BAD       {p}" for p in v.problems])
