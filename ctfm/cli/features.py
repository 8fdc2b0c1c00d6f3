"""``ctfm features``: lesion-centred features for a CSV of seed points -> a Parquet table."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import positive_int
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser(
        "features",
        help="features of lesions at seed points (CSV image_path,coordX,coordY,coordZ in LPS mm)",
        description="Features of lesions at seed points into one Parquet file (a row per usable CSV row; bad rows "
        "are skipped and named); the record of the run is <out>.provenance.json.",
    )
    parser.add_argument("csv", help="lesion CSV; other columns (labels, ids) are carried through")
    parser.add_argument(
        "--model", default="ct-fm", help="ct-fm, fmcib, a local model folder or FMCIB .torch file (see `ctfm models`)"
    )
    parser.add_argument("--out", required=True, help="Parquet file to write (the CSV's columns plus 'embedding')")
    parser.add_argument(
        "--crop", default=None, metavar="MODEL",
        help="use another registry model's crop geometry, e.g. fmcib or ct-fm (default: the model's own, from its "
        "spec; CT-FM's patch for a model without one)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=8, help="crops per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--report", default=None, help="also write every row's status and reason to this CSV")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.lesion_features import extract_lesion_features, read_lesions
    from ctfm.hub.loading import load
    from ctfm.outputs import refuse_overwrite
    from ctfm.provenance import describe_input, record_command

    refuse_overwrite([args.out, *([args.report] if args.report else [])], args.overwrite)
    images = list(dict.fromkeys(read_lesions(args.csv)["image_path"].dropna()))  # the scans the rows point at
    model = load(args.model, device=args.device)
    report = extract_lesion_features(
        args.csv, args.out, model=model, crop=args.crop, batch_size=args.batch_size, device=args.device
    )
    record_command(
        args.out, args, inputs=images, model=model, extra_inputs=[{**describe_input(args.csv), "role": "lesion table"}],
        beside_file=True,
    )  # fmt: skip
    print(report.summary())
    if args.report:
        report.write_csv(args.report)
    return report.exit_code
