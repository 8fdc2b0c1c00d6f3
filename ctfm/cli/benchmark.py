"""``ctfm benchmark probe``: compare encoders by frozen linear probes under one protocol (CVPR 2026 challenge)."""

from __future__ import annotations

import argparse

EXAMPLE = """example (the challenge's ROI protocol on AMOS, on a GPU):
  ctfm benchmark probe amos_labels.csv --models ct-fm random:ct-fm student/ --protocol roi --mode whole \\
      --device cuda --out bench/

labels CSV: image, optional mask (label map or TotalSegmentator folder), optional labels (mask classes, ';'),
optional split (train / val / test; default a stratified 60/20/20), and one column per target (blank = unknown).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("benchmark", help="compare encoders: frozen linear probes under one protocol")
    kinds = parser.add_subparsers(dest="benchmark", metavar="KIND", required=True)
    probe = kinds.add_parser(
        "probe",
        help="embed with every model under identical preprocessing, fit a linear probe per target, score it",
        epilog=EXAMPLE,
        formatter_class=lambda prog: argparse.RawDescriptionHelpFormatter(prog, max_help_position=32),
    )
    probe.add_argument("labels", help="labels CSV (see below)")
    probe.add_argument(
        "--models", nargs="+", required=True, metavar="MODEL",
        help="names, folders or random:<model> (the same architecture with random weights: the floor)",
    )  # fmt: skip
    probe.add_argument("--out", required=True, help="output folder (metrics.csv, predictions.csv, results.md/png)")
    probe.add_argument("--protocol", choices=("global", "roi"), default="global", help="(default: global)")
    probe.add_argument(
        "--mode", choices=("whole", "tiled"), default="whole",
        help="one forward pass over the whole scan / the crop, or tiles averaged (default: whole)",
    )  # fmt: skip
    probe.add_argument("--targets", nargs="+", help="target columns (default: every non-reserved column)")
    probe.add_argument(
        "--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), metavar=("Z", "Y", "X"),
        help="mm after orientation SPL (default: 1 1 1, the challenge's)",
    )  # fmt: skip
    probe.add_argument("--whole-size", type=int, nargs=3, default=(320, 320, 320), metavar=("Z", "Y", "X"),
                       help="whole-scan input (default: 320 320 320)")  # fmt: skip
    probe.add_argument("--crop-size", type=int, nargs=3, default=(160, 160, 160), metavar=("Z", "Y", "X"),
                       help="ROI crop (default: 160 160 160)")  # fmt: skip
    probe.add_argument("--patch-size", type=int, nargs=3, default=(24, 128, 128), metavar=("Z", "Y", "X"),
                       help="tiles of --mode tiled (default: 24 128 128)")  # fmt: skip
    probe.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (default: 1000)")
    probe.add_argument("--seed", type=int, default=0, help="(default: 0)")
    probe.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    probe.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ctfm.analysis.encoder_benchmark import CHALLENGE_PREPROCESSING, BenchmarkSettings, compare_encoders
    from ctfm.errors import CTFMError

    if args.bootstrap < 1:
        raise CTFMError(f"--bootstrap must be at least 1, got {args.bootstrap}")
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
    return 3 if result.skipped else 0
