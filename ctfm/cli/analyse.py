"""``ctfm analyse saliency|pca|tsne|stability``: the zero-shot analyses, each writing its picture into ``--out``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import fraction
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser(
        "analyse",
        help="zero-shot pictures: saliency, PCA concepts, t-SNE, stability",
        description="Zero-shot pictures, each written into --out under fixed names (saliency.nii.gz/.png, "
        "pca_concepts.png, tsne.png, stability.csv/.png) with provenance.json; a run that would overwrite one stops, "
        "unless --overwrite.",
    )
    kinds = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    def with_model(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
        sub.add_argument("--patch-size", type=int, nargs=3, default=(24, 64, 64), metavar=("Z", "Y", "X"))
        sub.add_argument("--device", default="cpu", help="torch device, e.g. cuda")

    saliency = kinds.add_parser("saliency", help="occlusion saliency of the patch at a point: NIfTI + PNG")
    saliency.add_argument("scan")
    saliency.add_argument("--point", type=float, nargs=3, metavar=("X", "Y", "Z"), help="RAS mm (default: centre)")
    saliency.add_argument(
        "--window", type=int, nargs=3, default=(8, 8, 8), help="the occluding box slid over the patch (voxels)"
    )
    pca = kinds.add_parser("pca", help="two scans coloured by one PCA of their patch embeddings")
    pca.add_argument("scans", nargs=2)
    pca.add_argument("--overlap", type=fraction, default=0.75, help="fraction of a tile shared by its neighbours")
    tsne = kinds.add_parser("tsne", help="t-SNE of a table's embeddings coloured by a label column")
    tsne.add_argument("--table", required=True, help="embedding table written by `ctfm embed`")
    tsne.add_argument("--labels", required=True, help="CSV with a path column and the label column")
    tsne.add_argument("--column", default="label", help="the label column of --labels")
    stability = kinds.add_parser("stability", help="similarity of corresponding patches of two scans of a subject")
    stability.add_argument("scans", nargs=2)
    stability.add_argument(
        "--shift", type=float, nargs=3, default=(0.0, 0.0, 0.0), help="RAS mm from the first scan to the second"
    )
    for sub in (saliency, pca, stability):
        with_model(sub)
    for sub in (saliency, pca, tsne, stability):
        sub.add_argument("--out", required=True, help="folder for the picture (and NIfTI / CSV)")
        sub.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run)


#: The files each analysis writes into --out.
OUTPUTS = {
    "saliency": ("saliency.nii.gz", "saliency.png"),
    "pca": ("pca_concepts.png",),
    "tsne": ("tsne.png",),
    "stability": ("stability.csv", "stability.png"),
}


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ctfm.analysis import pictures
    from ctfm.outputs import output_folder, refuse_overwrite
    from ctfm.provenance import describe_input, record_command
    from ctfm.transforms.preprocess import CTPreprocessing

    out = output_folder(args.out)
    refuse_overwrite([out / name for name in OUTPUTS[args.analysis]], args.overwrite)
    if args.analysis == "tsne":
        print(f"wrote {pictures.tsne_picture(args.table, args.labels, args.column, out)}")
        record_command(out, args, extra_inputs=[describe_input(args.table), describe_input(args.labels)])
        return 0
    from ctfm.hub import load

    model = load(args.model, device=args.device)
    patch = tuple(args.patch_size)
    if args.analysis == "saliency":
        written = pictures.saliency_picture(
            model, args.scan, args.out, point_mm=args.point, patch_size=patch, window=tuple(args.window)
        )
        print("wrote " + ", ".join(map(str, written)))
    elif args.analysis == "pca":
        print(f"wrote {pictures.pca_picture(model, args.scans, args.out, patch_size=patch, overlap=args.overlap)}")
    else:
        transform = np.eye(4)
        transform[:3, 3] = args.shift
        first, second = args.scans
        numbers, png = pictures.stability_picture(
            model, first, second, args.out, world_transform=transform, patch_size=patch
        )
        print(", ".join(f"{k} {v:.0f}" if k == "patches" else f"{k} {v:.3f}" for k, v in numbers.items()), end="")
        print(f"; wrote {png}")
    inputs = [args.scan] if args.analysis == "saliency" else args.scans
    record_command(out, args, inputs=inputs, model=model, preprocessing=CTPreprocessing())
    return 0
