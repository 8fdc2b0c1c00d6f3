"""``ctfm embed``: scans (or their organs) -> a resumable Parquet table of path and embedding (a folder of parts)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import fraction, positive_int

    parser = subparsers.add_parser(
        "embed",
        help="embed CT scans into a resumable Parquet table (path, embedding)",
        description="Embed CT scans into a Parquet table folder (path, embedding). A re-run into the same table adds "
        "the scans it lacks (resumes) and never rewrites a row; the record of the runs is <out>.provenance.json. "
        "With --masks, one row per (scan, region) instead, with the region's name, label value and mask "
        "fingerprint; a missing mask or an empty region is skipped and counted (exit code 3).",
    )
    parser.add_argument("paths", nargs="+", help="NIfTI / NRRD / MHA files or DICOM series folders")
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument(
        "--out", required=True, help="table folder (e.g. embeddings.parquet); a re-run appends the scans not in it"
    )
    parser.add_argument("--reduce", choices=("mean", "min", "max"), default="mean", help="patch -> scan reduction")
    parser.add_argument("--overlap", type=fraction, default=0.0, help="fraction of a patch shared by neighbours")
    parser.add_argument("--batch-size", type=positive_int, default=4, help="patches per forward pass")
    parser.add_argument(
        "--patch-size", type=positive_int, nargs=3, default=None, metavar=("Z", "Y", "X"),
        help="tile size (default: the model's own, from its spec; 24 128 128 for CT-FM)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--native-spacing", action="store_true", help="do not resample (the model card's variant)")
    parser.add_argument("--patches", action="store_true", help="also keep every patch embedding and its RAS mm centre")
    parser.add_argument(
        "--scans-per-part", type=positive_int, default=16, help="scans per Parquet part (lost at most if killed)"
    )
    parser.add_argument(
        "--whole-volume", action="store_true",
        help="one forward pass per scan (padded to a multiple of 16, or --crop-size), global-average-pooled, "
        "instead of tiles: the CVPR 2026 challenge protocol; needs the memory of the whole scan's activations",
    )  # fmt: skip
    parser.add_argument(
        "--crop-size", type=positive_int, nargs=3, default=None, metavar=("Z", "Y", "X"),
        help="box of --whole-volume (centre crop or pad), or of --pool crop (default 160 160 160)",
    )  # fmt: skip
    regions = parser.add_argument_group(
        "regions", "one row per (scan, region): embed inside each scan's organ masks (e.g. TotalSegmentator's)"
    )
    regions.add_argument(
        "--masks", default=None,
        help="where each scan's mask is: a folder holding <scan stem>.nii.gz (a label map, names in <stem>.json) "
        "or <scan stem>/ (a TotalSegmentator folder), or a pattern with {stem}, {parent} (the scan's folder name) "
        "and {dir} (its path), e.g. '{dir}/segmentations'; same-named scans need a pattern",
    )  # fmt: skip
    regions.add_argument(
        "--labels", type=label_list, default=None,
        help="comma-separated classes, by name or value, one region each (e.g. liver,spleen); default every value "
        "in the mask",
    )  # fmt: skip
    regions.add_argument(
        "--pool", choices=("mean", "max", "min", "crop"), default="mean",
        help="region pooling: over the tiles centred inside it (mean weighted by each tile's fraction inside), or "
        "crop: one forward pass over --crop-size around it",
    )  # fmt: skip
    parser.set_defaults(func=run)


def label_list(text: str) -> list[str]:
    """``liver,spleen`` -> ``["liver", "spleen"]``; an empty name is a usage error."""
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"give comma-separated class names or values, got {text!r}")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    from ctfm.embedding import model_defaults
    from ctfm.embedding_table import corpus_preprocessing, embed_to_parquet
    from ctfm.errors import UsageError
    from ctfm.hub import load
    from ctfm.provenance import record_command

    if args.masks is None and (args.labels or args.pool != "mean"):
        raise UsageError("--labels and --pool choose regions of the masks: give --masks too")
    if args.crop_size and not (args.whole_volume or args.pool == "crop"):
        raise UsageError("--crop-size is the box of --whole-volume or --pool crop: give one of them")
    model = load(args.model, device=args.device)
    patch_size = model_defaults(model, args.patch_size, None)[0]
    report = embed_to_parquet(
        args.paths,
        args.out,
        model=model,
        model_name=args.model,
        reduce=args.reduce,
        overlap=args.overlap,
        batch_size=args.batch_size,
        patch_size=patch_size,
        device=args.device,
        native_spacing=args.native_spacing,
        patches=args.patches,
        scans_per_part=args.scans_per_part,
        whole_volume=args.whole_volume,
        crop_size=args.crop_size,
        masks=args.masks,
        labels=args.labels,
        pool=args.pool,
    )
    preprocessing = corpus_preprocessing(patch_size, args.native_spacing, model)
    record_command(args.out, args, inputs=args.paths, model=model, preprocessing=preprocessing, merge=True,
                   beside_file=True)  # fmt: skip
    print(report.summary())
    return report.exit_code
