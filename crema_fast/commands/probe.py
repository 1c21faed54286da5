"""``crema-fast probe EMB --store STORE --labels superdiagnostic``: a linear probe on embeddings.

    crema-fast probe ptbxl.emb.zarr --store ptbxl.zarr --labels superdiagnostic --out reports/probe
    crema-fast probe cinc.emb.zarr --store cinc.zarr --labels snomed --min-count 20 --split record
    crema-fast probe x.emb.zarr --store x.zarr --labels-csv my_labels.csv

Labels from the store (crema_fast.eval.labels), split by PTB-XL strat_fold or by patient
(crema_fast.eval.splits), a logistic probe per class with C chosen on validation
(crema_fast.eval.probe), then macro AUROC with its bootstrap 95% interval, AP and F1 on the test split,
printed as a table; ``--out`` also writes report.json and report_roc.png.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from crema_fast.eval.labels import LABEL_SETS  # no torch

    parser.add_argument("embeddings", metavar="EMB", help="embeddings written by crema-fast embed")
    parser.add_argument("--store", required=True, help="the store the embeddings were made from (its labels)")
    parser.add_argument("--labels", default=None, choices=LABEL_SETS,
                        help="label set (default superdiagnostic; csv with --labels-csv)")
    parser.add_argument("--labels-csv", metavar="CSV", help="a CSV of record_id,labels to use instead of the store's")
    parser.add_argument("--scp-statements", metavar="CSV",
                        help="PTB-XL's scp_statements.csv (default: beside the store's PTB-XL sources)")
    parser.add_argument("--min-count", type=int, default=0,
                        help="drop classes with fewer positives (default 0: keep every class)")
    parser.add_argument("--min-likelihood", type=float, default=0.0,
                        help="PTB-XL: count codes with at least this likelihood (default 0: all, as the benchmark)")
    parser.add_argument("--split", choices=("auto", "patient", "record"), default="auto",
                        help="auto: strat_fold where present, else patient-disjoint; record: by record id")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the bootstrap (default 0)")
    parser.add_argument("--val-frac", type=float, default=0.1, help="validation fraction without folds")
    parser.add_argument("--test-frac", type=float, default=0.1, help="test fraction without folds")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--out", metavar="REPORT_DIR", help="write report.json and report_roc.png here")


def run(args: argparse.Namespace) -> int:
    from zarr_store.reader import StoreReader

    from crema_fast.eval.embed import read_embeddings
    from crema_fast.eval.labels import load_labels
    from crema_fast.eval.probe import align, probe_table
    from crema_fast.eval.report import build_report, format_table, write_report

    label_set = args.labels or ("csv" if args.labels_csv else "superdiagnostic")
    emb = read_embeddings(args.embeddings)
    reader = StoreReader(args.store)
    table = load_labels(reader, label_set, csv=args.labels_csv, scp_statements=args.scp_statements,
                        min_likelihood=args.min_likelihood, min_count=args.min_count)
    x = align(emb.record_ids, emb.emb, table, store_rows=len(reader))
    res = probe_table(x, table, split_by=args.split, seed=args.seed, val_frac=args.val_frac,
                      test_frac=args.test_frac, n_boot=args.n_boot)
    encoder = "random init" if emb.meta.get("random_init") else "pretrained"
    report = build_report(res.metrics, checkpoint=emb.meta.get("checkpoint"), store=reader.store,
                          label_set=label_set, split=res.split, encoder=encoder, embeddings=args.embeddings,
                          rows={k: int(len(v)) for k, v in res.parts.items()}, probe_C=res.probe.C,
                          probe_val_auroc={str(k): v for k, v in res.probe.val_auroc.items()},
                          labels_source=table.source, dropped_empty=table.n_empty)
    print(format_table(report))
    if args.out:
        paths = write_report(args.out, report, y_true=res.y_test, scores=res.scores_test)
        print(f"\nreport {paths['json']}\nROC    {paths['roc']}")
    return 0
