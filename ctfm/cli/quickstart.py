"""``ctfm quickstart``: sample data -> pretraining with the Lighter recipe -> export -> load -> embed, on a CPU."""

from __future__ import annotations

import argparse

from ctfm.outputs import OVERWRITE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart", help="pretrain a small CT-FM on bundled synthetic scans end to end (a few minutes on a CPU)"
    )
    parser.add_argument("--out", default="runs/quickstart", help="folder for data, logs, checkpoints and the encoder")
    parser.add_argument("--scans", type=int, default=8, help="number of synthetic training scans")
    parser.add_argument("--configs", default=None, help="folder holding quickstart.yaml (default: ctfm's own recipes)")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("overrides", nargs="*", help="extra lighter overrides, e.g. vars::max_epochs=2")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.quickstart import run_quickstart

    run_quickstart(
        args.out, n_scans=args.scans, configs=args.configs, overrides=args.overrides, overwrite=args.overwrite
    )
    return 0
