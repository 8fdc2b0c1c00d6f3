"""``ctfm benchmark probe``: compare encoders by frozen linear probes under one protocol (CVPR 2026 challenge)."""

from __future__ import annotations

import argparse

from ctfm.cli.arguments import positive_int

LABELS_CSV = (
    "The labels CSV: image, optional mask (a label map or a TotalSegmentator folder), optional labels (mask "
    "classes, ';'-separated), optional split (train / val / test; default a stratified 60/20/20), and one column "
    "per target (a blank cell: unknown for that target)."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("benchmark", help="compare encoders: frozen linear probes under one protocol")
    kinds = parser.add_subparsers(dest="benchmark", metavar="KIND", required=True)
    probe = kinds.add_parser(
        "probe",
        help="embed with every model under identical preprocessing, fit a linear probe per target, score it",
        description=LABELS_CSV,
    )
    probe.add_argument("labels", help="labels CSV (see the description above)")
    probe.add_argument(
        "--models", nargs="+", required=True, metavar="MODEL",
        help="names, folders or random:<model> (the same architecture with random weights: the floor)",
    )  # fmt: skip
    probe.add_argument("--out", required=True, help="output folder (metrics.csv, predictions.csv, results.md/png)")
    probe.add_argument(
        "--protocol", choices=("global", "roi"), default="global", help="whole scan, or a region of the mask"
    )
    probe.add_argument(
        "--mode", choices=("whole", "tiled"), default="whole",
        help="one forward pass over the whole scan / the crop, or tiles averaged",
    )  # fmt: skip
    probe.add_argument(
        "--targets", nargs="+", help="target columns; every column but image, mask, labels and split when not given"
    )
    probe.add_argument(
        "--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X"),
        help="mm after orientation SPL (the challenge: 1 1 1)",
    )  # fmt: skip
    probe.add_argument("--whole-size", type=int, nargs=3, default=(320, 320, 320), metavar=("Z", "Y", "X"),
                       help="whole-scan input")  # fmt: skip
    probe.add_argument("--crop-size", type=int, nargs=3, default=(160, 160, 160), metavar=("Z", "Y", "X"),
                       help="ROI crop")  # fmt: skip
    probe.add_argument("--patch-size", type=int, nargs=3, default=(24, 128, 128), metavar=("Z", "Y", "X"),
                       help="tiles of --mode tiled")  # fmt: skip
    probe.add_argument("--bootstrap", type=positive_int, default=1000, help="bootstrap resamples for the CIs")
    probe.add_argument("--seed", type=int, default=0, help="seed of the split and the bootstrap")
    probe.add_argument("--device", default="cpu", help="torch device")
    probe.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    probe.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ctfm.analysis.encoder_benchmark import (
        CHALLENGE_PREPROCESSING,
        RESULT_FILES,
        BenchmarkSettings,
        compare_encoders,
    )
    from ctfm.outputs import output_folder, refuse_overwrite
    from ctfm.provenance import describe_input, record_command
    from ctfm.reports import EXIT_OK, EXIT_PARTIAL

    out = output_folder(args.out)
    refuse_overwrite([out / name for name in RESULT_FILES], args.overwrite)
    settings = BenchmarkSettings(
        protocol=args.protocol,
        mode=args.mode,
        preprocessing=replace(CHALLENGE_PREPROCESSING, spacing=tuple(args.spacing)),
        whole_size=tuple(args.whole_size),
        crop_size=tuple(args.crop_size),
        patch_size=tuple(args.patch_size),
    )  # fmt: skip
    result = compare_encoders(
        args.labels, args.models, args.out, settings=settings, targets=args.targets, n_bootstrap=args.bootstrap,
        seed=args.seed, device=args.device,
    )  # fmt: skip
    print(result.metrics.pipe(lambda t: t[t["metric"] == "balanced_accuracy"])
           .pivot(index="target", columns="model", values="value").round(3).to_string())  # fmt: skip
    for target, count in result.dropped_labels.items():
        if count:
            print(f"{target}: {count} rows without a label were left out")
    for item, reason in result.skipped[:10]:
        print(f"  skipped {item}: {reason}")
    if len(result.skipped) > 10:
        print(f"  ... and {len(result.skipped) - 10} more (benchmark.json lists them all)")
    print(f"results: {args.out}/results.md, {args.out}/results.png")
    record_command(out, args, extra_inputs=[describe_input(args.labels)], preprocessing=settings.describe())
    return EXIT_PARTIAL if result.skipped else EXIT_OK
