"""``ctfm recipes``: list the Lighter recipes that ship with ctfm, or copy one (a self-contained file) to edit."""

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
    copy = commands.add_parser("copy", help="copy a recipe (one self-contained file) into a folder; never overwrites")
    copy.add_argument("name", help="recipe name as listed, e.g. pretrain")
    copy.add_argument("destination", help="folder to copy into; prints the command that runs the copy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.recipes import copy_recipe, list_recipes, recipe_command, recipes_dir

    if args.recipes_command == "copy":
        written = copy_recipe(args.name, args.destination, folder=args.folder)
        for path in written:
            print(f"wrote {path}")
        print(f"run it: {recipe_command(written[0])}")
        return 0
    import shutil
    import textwrap
    from pathlib import Path

    import ctfm.recipes

    root = recipes_dir(args.folder)
    shipped = root.resolve() == (Path(ctfm.recipes.__file__).resolve().parent / root.name).resolve()
    print(
        f"recipes {'shipped with ctfm' if shipped else 'in'} {root}: run one by its path from any folder "
        f"(`lighter fit {root}/NAME.yaml vars::...=...`), or edit a copy (`ctfm recipes copy NAME DIR`):"
    )
    width = max(shutil.get_terminal_size().columns, 80)
    for name, summary in list_recipes(args.folder).items():
        print(textwrap.fill(summary, width, initial_indent=f"  {name:22s} ", subsequent_indent=" " * 25))
    return 0
