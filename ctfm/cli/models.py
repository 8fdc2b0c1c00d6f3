"""``ctfm models``: list the pretrained models ``ctfm.load`` knows by name."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the pretrained models known by name")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.hub import MODELS

    for spec in MODELS.values():
        outputs = f"{len(spec.classes)} classes" if spec.classes else f"{spec.embedding_dim}-d embedding"
        spacing = (
            "native" if spec.preprocessing.spacing is None else "x".join(f"{s:g}" for s in spec.preprocessing.spacing)
        )
        print(f"{spec.name:18s} {spec.repo_id:42s} {outputs:16s} spacing {spacing:8s} {spec.description}")
    return 0
