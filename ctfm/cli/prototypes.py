"""``ctfm prototypes --images A.nii.gz ... --labels A_labels.nii.gz ... --model M --out prototypes.pt``."""

from __future__ import annotations

import argparse


def class_pair(text: str) -> tuple[int, str]:
    """``1=lung`` -> ``(1, "lung")``."""
    value, sep, name = text.partition("=")
    if not sep or not value.strip().isdigit() or not name.strip():
        raise argparse.ArgumentTypeError(f"expected VALUE=NAME (e.g. 1=lung), got {text!r}")
    return int(value), name.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prototypes", help="class prototypes (mean patch embeddings per class) from a few labelled scans"
    )
    parser.add_argument("--images", nargs="+", required=True, help="reference scans")
    parser.add_argument("--labels", nargs="+", required=True, help="one label map per scan, on its grid")
    parser.add_argument(
        "--classes", nargs="+", type=class_pair, metavar="VALUE=NAME",
        help="label values to learn and their names (default: the first label map's .json sidecar)",
    )  # fmt: skip
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument("--out", required=True, help="prototypes file to write (.pt)")
    parser.add_argument("--centres", type=int, default=1, help="k-means centres per class (1: the mean)")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(16, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction of a tile shared by its neighbours")
    parser.add_argument("--native-spacing", action="store_true", help="do not resample to 3 x 1 x 1 mm")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.prototypes import compute_prototypes
    from ctfm.hub import load
    from ctfm.outputs import refuse_overwrite
    from ctfm.transforms.preprocess import CTPreprocessing

    refuse_overwrite([args.out], args.overwrite)
    model = load(args.model, device=args.device)
    prototypes = compute_prototypes(
        model, args.images, args.labels, dict(args.classes) if args.classes else None,
        patch_size=args.patch_size, overlap=args.overlap, centres=args.centres,
        preprocess=CTPreprocessing(spacing=None) if args.native_spacing else CTPreprocessing(),
    )  # fmt: skip
    prototypes.save(args.out)
    counts = ", ".join(f"{name} {count}" for name, count in zip(prototypes.class_names, prototypes.counts))
    print(f"{args.out}: {len(prototypes.vectors)} prototypes of {prototypes.dim}-d (tiles per class: {counts})")
    return 0
