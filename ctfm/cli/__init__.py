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
    from ctfm.cli.help import EPILOG, HelpFormatter, finish_help

    parser = argparse.ArgumentParser(
        prog="ctfm",
        description="CT foundation models: data, pretraining, embedding.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:  # a command still being written must not break the others
            if err.name != name:
                raise
            continue
        module.register(subparsers)
    finish_help(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    args.argv = argv  # the command line, for provenance.json
    from ctfm.errors import CTFMError, UsageError
    from ctfm.reports import EXIT_FAILED, EXIT_USAGE

    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        print(f"ctfm {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except CTFMError as err:
        print(f"ctfm {args.command}: error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `ctfm ... | head` closed the pipe: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
