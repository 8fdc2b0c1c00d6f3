"""``ctfm embed``: scans -> a resumable Parquet table of path and embedding (a folder of parts)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import fraction, positive_int

    parser = subparsers.add_parser(
        "embed",
        help="embed CT scans into a resumable Parquet table (path, embedding)",
        description="Embed CT scans into a Parquet table folder (path, embedding). A re-run into the same table adds "
        "the scans it lacks (resumes) and never rewrites a row; the record of the runs is <out>.provenance.json.",
    )
    parser.add_argument("paths", nargs="+", help="NIfTI / NRRD / MHA files or DICOM series folders")
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument(
        "--out", required=True, help="table folder (e.g. embeddings.parquet); a re-run appends the scans not in it"
    )
    parser.add_argument("--reduce", choices=("mean", "min", "max"), default="mean", help="patch -> scan reduction")
    parser.add_argument("--overlap", type=fraction, default=0.0, help="fraction of a patch shared by neighbours")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="patches per forward pass")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(24, 128, 128), metavar=("Z", "Y", "X"))
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--native-spacing", action="store_true", help="do not resample (the model card's variant)")
    parser.add_argument("--patches", action="store_true", help="also keep every patch embedding and its RAS mm centre")
    parser.add_argument(
        "--scans-per-part", type=positive_int, default=16, help="scans per Parquet part (lost at most if killed)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.embedding_table import corpus_preprocessing, embed_to_parquet
    from ctfm.hub import load
    from ctfm.provenance import record_command

    model = load(args.model, device=args.device)
    report = embed_to_parquet(
        args.paths,
        args.out,
        model=model,
        model_name=args.model,
        reduce=args.reduce,
        overlap=args.overlap,
        batch_size=args.batch_size,
        patch_size=tuple(args.patch_size),
        device=args.device,
        native_spacing=args.native_spacing,
        patches=args.patches,
        scans_per_part=args.scans_per_part,
    )
    preprocessing = corpus_preprocessing(tuple(args.patch_size), args.native_spacing)
    record_command(args.out, args, inputs=args.paths, model=model, preprocessing=preprocessing, merge=True,
                   beside_file=True)  # fmt: skip
    print(report.summary())
    return report.exit_code
