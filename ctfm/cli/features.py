"""``ctfm features``: lesion-centred features for a CSV of seed points -> a Parquet table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", help="features of lesions at seed points (CSV image_path,coordX,coordY,coordZ in LPS mm)"
    )
    parser.add_argument("csv", help="lesion CSV; other columns (labels, ids) are carried through")
    parser.add_argument(
        "--model", default="ct-fm", help="ct-fm, fmcib, a local model folder or FMCIB .torch file (see `ctfm models`)"
    )
    parser.add_argument("--out", required=True, help="Parquet file to write (the CSV's columns plus 'embedding')")
    parser.add_argument(
        "--crop", choices=("fmcib", "ct-fm"), default=None, help="crop geometry (default: the model's own)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="crops per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--report", default=None, help="also write every row's status and reason to this CSV")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.lesion_features import extract_lesion_features

    report = extract_lesion_features(
        args.csv, args.out, model=args.model, crop=args.crop, batch_size=args.batch_size, device=args.device
    )
    print(report.summary())
    if args.report:
        report.write_csv(args.report)
    return 0 if report.extracted else 1
