"""The ``crema-fast`` command: a thin argparse hub; each subcommand lives beside the code it drives.

Every subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Errors of the
user's making (``CremaError`` and its subclasses, ``FileNotFoundError``, ``ValueError`` raised while
parsing inputs) print as one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from zarr_store.errors import StoreError

from crema_fast.errors import CremaError

# subcommand -> (module, one-line help). Modules are imported only when their command runs, so
# `crema-fast info` does not pay for torch.
COMMANDS = {
    "convert": ("crema_fast.commands.convert", "convert WFDB archives into a Zarr v3 store"),
    "info": ("crema_fast.commands.info", "describe a store: counts, rate, leads, labels, size"),
    "pretrain": ("crema_fast.commands.pretrain", "pretrain a SiT with the CR-MAE loss (no arguments: demo run)"),
    "embed": ("crema_fast.commands.embed", "frozen-encoder embeddings of every row of a store (Zarr)"),
    "probe": ("crema_fast.commands.probe", "linear probe on embeddings: macro AUROC with a bootstrap interval"),
    "finetune": ("crema_fast.commands.finetune", "fine-tune the whole encoder with a linear head on a store's labels"),
    "evaluate": ("crema_fast.commands.evaluate", "pretrained probe vs random-init probe vs from-scratch (--baselines)"),
    "bench": ("crema_fast.commands.bench", "run the benchmarks this machine can run; one Markdown report with plots"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crema-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except (CremaError, StoreError, FileNotFoundError, NotADirectoryError, FileExistsError) as exc:
        print(f"crema-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `crema-fast info STORE | head`: the reader went away; not an error of ours.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"crema-fast {args.command}: interrupted; what was written is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
