"""``ctfm export``: a training checkpoint -> a Hub-format model directory that ``ctfm.load`` reads."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="export the network of a training checkpoint (pretrained encoder, fine-tuned SegResNetDS)"
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint written by `lighter fit` (e.g. .../last.ckpt)")
    parser.add_argument("out_dir", help="directory to write config.json and model.safetensors into")
    parser.add_argument(
        "--config-key",
        help="config key of the network to export (default: the first SegResEncoder or SegResNetDS among "
        "model::network::student, model::network::encoder and model::network)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.export import export_encoder

    out = export_encoder(args.checkpoint, args.out_dir, config_key=args.config_key)
    print(f"exported to {out}; load it with ctfm.load({str(out)!r})")
    return 0
