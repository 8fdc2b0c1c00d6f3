"""``ctfm export``: a pretraining checkpoint -> an encoder directory that ``ctfm.load`` reads."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export the encoder of a pretraining checkpoint in the Hub format")
    parser.add_argument("checkpoint", help="Lightning checkpoint written by `lighter fit` (e.g. .../last.ckpt)")
    parser.add_argument("out_dir", help="directory to write config.json and model.safetensors into")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.export import export_encoder

    out = export_encoder(args.checkpoint, args.out_dir)
    print(f"exported encoder to {out}; load it with ctfm.load({str(out)!r})")
    return 0
