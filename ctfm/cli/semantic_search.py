"""``ctfm semantic-search SOURCE --point X Y Z TARGET... --model M --out DIR``: a point's anatomy in other scans."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "semantic-search", help="heat maps of where the anatomy at a point of one scan appears in target scans"
    )
    parser.add_argument("source", help="scan holding the query point")
    parser.add_argument("--point", type=float, nargs=3, required=True, metavar=("X", "Y", "Z"), help="world mm (RAS)")
    parser.add_argument("targets", nargs="+", help="scans to search")
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument("--out", required=True, help="folder for matches.csv and one heat-map NIfTI + PNG per target")
    parser.add_argument("--mask-dir", help="organ masks named like the targets, on their grids: adds OCD columns")
    parser.add_argument("--lps", action="store_true", help="--point and the csv are DICOM/ITK (LPS) coordinates")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(24, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction of a window shared by its neighbours")
    parser.add_argument("--native-spacing", action="store_true", help="do not resample to 3 x 1 x 1 mm")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctfm.analysis.semantic_search import run_semantic_search
    from ctfm.analysis.windows import TargetCache
    from ctfm.hub import load
    from ctfm.transforms.preprocess import CTPreprocessing

    model = load(args.model, device=args.device)
    preprocess = CTPreprocessing(spacing=None) if args.native_spacing else CTPreprocessing()
    cache = TargetCache(model, preprocess, args.patch_size, args.overlap, folder=Path(args.out) / "cache")
    table = run_semantic_search(
        args.source, args.point, args.targets, model, args.out, lps=args.lps, mask_dir=args.mask_dir,
        patch_size=args.patch_size, overlap=args.overlap, preprocess=preprocess, cache=cache,
    )  # fmt: skip
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0
