"""The ``ctfm`` command. Each sub-command lives in its own module with a ``register(subparsers)`` function.

Modules here import only argparse at module level, so ``ctfm --help`` stays fast; the work is imported inside
each command's handler.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

#: Sub-command modules, in the order ``ctfm --help`` lists them.
COMMAND_MODULES = (
    "ctfm.cli.quickstart",
    "ctfm.cli.embed",
    "ctfm.cli.segment",
    "ctfm.cli.features",
    "ctfm.cli.probe",
    "ctfm.cli.benchmark",
    "ctfm.cli.search",
    "ctfm.cli.retrieval_eval",
    "ctfm.cli.semantic_search",
    "ctfm.cli.prototypes",
    "ctfm.cli.pseudo_label",
    "ctfm.cli.analyse",
    "ctfm.cli.export",
    "ctfm.cli.prepare",
    "ctfm.cli.idc",
    "ctfm.cli.models",
    "ctfm.cli.recipes",
    "ctfm.cli.diffusion",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctfm", description="CT foundation models: data, pretraining, embedding.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a command still being written must not break the others
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from ctfm.errors import CTFMError

    try:
        return int(args.func(args) or 0)
    except CTFMError as err:
        print(f"ctfm {args.command}: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `ctfm ... | head` closed the pipe: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
