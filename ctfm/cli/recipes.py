"""``ctfm recipes``: list the Lighter recipes that ship with ctfm, or copy one (with its ``_base`` pieces) to edit."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipes",
        help="list the Lighter recipes, or copy one to edit and run",
        description="List the Lighter recipes with the first sentence of each header, or copy one (with the _base "
        "pieces it uses) into a folder. A copy into a folder that holds any of those files writes nothing.",
    )
    parser.add_argument("--from", dest="folder", help="recipes folder (default: ./lighter_configs, else ctfm's own)")
    commands = parser.add_subparsers(dest="recipes_command", metavar="ACTION")
    copy = commands.add_parser("copy", help="copy a recipe and the _base pieces it uses into a folder")
    copy.add_argument("name", help="recipe name as listed, e.g. pretrain")
    copy.add_argument("destination", help="folder to copy into; run `lighter fit DESTINATION/NAME.yaml` next to it")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.recipes import copy_recipe, list_recipes, recipes_dir

    if args.recipes_command == "copy":
        written = copy_recipe(args.name, args.destination, folder=args.folder)
        for path in written:
            print(f"wrote {path}")
        print(f"run it from here: lighter fit {written[0]} vars::...=...")
        return 0
    import os
    import shutil
    import textwrap
    from pathlib import Path

    root = recipes_dir(args.folder)
    relative = os.path.relpath(root)
    if relative.startswith(os.pardir) or Path(relative).is_absolute():  # the copy installed with ctfm
        print(f"recipes shipped with ctfm ({root}); to edit and run one: `ctfm recipes copy NAME DIR`, then")
        print("`lighter fit DIR/NAME.yaml vars::...=...` from the folder you copied it from:")
    else:
        print(f"recipes in {relative} (run with `lighter fit {Path(relative).as_posix()}/NAME.yaml vars::...=...`):")
    width = max(shutil.get_terminal_size().columns, 80)
    for name, summary in list_recipes(args.folder).items():
        print(textwrap.fill(summary, width, initial_indent=f"  {name:22s} ", subsequent_indent=" " * 25))
    return 0
