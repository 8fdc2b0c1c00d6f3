"""``ctfm models``: list the pretrained models ``ctfm.load`` knows by name."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the pretrained models known by name")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.hub import MODELS

    for spec in MODELS.values():
        print(f"{spec.name:20s} {spec.repo_id:45s} {spec.description}")
    return 0
