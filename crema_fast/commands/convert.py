"""``crema-fast convert SRC... --out STORE``: WFDB archives, CODE-15% folders or arrays (HDF5, .npy,
.npz) -> one Zarr v3 store (zarr_store.convert; arrays: zarr_store.array_sources).

Bad records are skipped and listed in ``STORE/_convert/quarantine.json``; bad arguments are
``BadArgumentError`` (a StoreError), which the hub prints as one line with exit status 2. Errors about
an argument name the command-line flag, not the API argument (``--window``, not ``window_s``).
"""

from __future__ import annotations

import argparse

# zarr_store.convert's argument names -> this command's flags, for error messages
_FLAGS = {"window_s": "--window", "shard_size": "--shard-size", "workers": "--workers", "rate": "--rate",
          "codec": "--codec", "dask": "--dask", "input_rate": "--input-rate", "leads": "--leads",
          "layout": "--layout", "units": "--units", "ids": "--ids"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC",
                        help="folders of WFDB records (.hea + .dat/.mat); or CODE-15%% folders (exams.csv + "
                             "exams_part*.hdf5), FILE.h5[:DATASET], FILE.npz[:NAME] or FILE.npy arrays")
    parser.add_argument("--out", required=True, metavar="STORE",
                        help="store path or fsspec URL; an existing store is appended to (records it "
                             "already holds are skipped)")
    parser.add_argument("--rate", type=int, default=500, help="store sampling rate in Hz (default 500)")
    parser.add_argument("--window", type=float, default=10.0, help="row length in seconds (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    parser.add_argument("--dask", default=None, metavar="ADDRESS|local",
                        help="run the shard tasks on a Dask cluster (scheduler address, or 'local'); "
                             "memory:// stores and sources always convert in-process")
    parser.add_argument("--codec", choices=("zstd", "lz4", "delta"), default="zstd",
                        help="zstd: Blosc zstd 1 + bit-shuffle (default); lz4: faster, larger; "
                             "delta: numcodecs delta + zstd, smallest, outside the Zarr v3 spec")
    parser.add_argument("--shard-size", type=int, default=512, help="rows per shard file (default 512)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arrays = parser.add_argument_group("array inputs (HDF5, .npy, .npz; CODE-15%% needs none of these)")
    arrays.add_argument("--input-rate", type=float, default=None, metavar="HZ",
                        help="the arrays' sampling rate (CODE-15%%: 400)")
    arrays.add_argument("--leads", default=None, metavar="I,II,...",
                        help="lead names in the array's order, comma-separated (default: the file's "
                             "'leads' attribute; CODE-15%%: I,II,III,aVR,aVL,aVF,V1-V6, checked)")
    arrays.add_argument("--layout", choices=("NTL", "NLT"), default=None, type=str.upper,
                        help="NTL = (items, time, leads), NLT = (items, leads, time) (default: from the shape)")
    arrays.add_argument("--units", default=None, metavar="mV|uV|V",
                        help="the arrays' units, scaled to the store's µV (default uV; CODE-15%%: mV)")
    arrays.add_argument("--ids", default=None, metavar="NAME",
                        help="dataset / npz member / .npy file of record ids (default: exam_id or ids "
                             "when present, else the item's index)")


def run(args: argparse.Namespace) -> int:
    from zarr_store.convert import convert
    from zarr_store.errors import BadArgumentError

    try:
        summary = convert(args.sources, args.out, rate=args.rate, window_s=args.window, workers=args.workers,
                          dask=args.dask, codec=args.codec, progress=not args.no_progress,
                          shard_size=args.shard_size, input_rate=args.input_rate,
                          leads=args.leads.split(",") if args.leads else None, layout=args.layout,
                          units=args.units, ids=args.ids)
    except BadArgumentError as exc:
        name, sep, rest = str(exc).partition(": ")
        if sep and name in _FLAGS:
            raise BadArgumentError(f"{_FLAGS[name]}: {rest}") from None
        raise
    print(summary.format())
    return 0
