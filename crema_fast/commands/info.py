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

import json

from zarr_store.describe import describe, first_rows, parse_labels  # noqa: F401 (part of this command's API)
from zarr_store.errors import BadArgumentError



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
