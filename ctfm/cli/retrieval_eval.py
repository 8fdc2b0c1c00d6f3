"""``ctfm retrieval-eval DATA --model M --out DIR``: the CT-FM retrieval protocol on OrganMNIST3D or 3D-MIR splits.

DATA is a MedMNIST 3D ``.npz`` or 3D-MIR-style split CSVs over MSD images (see :mod:`ctfm.data.mir3d`).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import fraction
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser(
        "retrieval-eval", help="retrieval metrics (P, AP, HR, F1 at k) on OrganMNIST3D .npz or 3D-MIR split CSVs"
    )
    parser.add_argument(
        "data",
        nargs="+",
        help="MedMNIST 3D .npz (train_images/train_labels, val_*, test_*), or 3D-MIR CSVs: one with a split "
        "column, or one per split (train/val/test in the file name)",
    )
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument("--out", required=True, help="folder for metrics.csv, per_query.csv and neighbours.png")
    parser.add_argument("-k", type=int, nargs="+", default=[3, 5, 10], help="cut-offs")
    parser.add_argument(
        "--reduce", choices=("mean", "min", "max"), help="patch -> volume reduction (.npz: mean, CSVs: min)"
    )
    parser.add_argument(
        "--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the volume (.npz), 24 128 128 (CSVs)"
    )
    parser.add_argument("--msd-root", help="CSVs: folder the image paths are relative to (default: the CSV's)")
    parser.add_argument("--label-column", default="label", help="CSVs: the label compared (e.g. lesion, organ)")
    parser.add_argument("--image-column", default="image", help="CSVs: the image path column")
    parser.add_argument("--overlap", type=fraction, default=0.0, help="CSVs: fraction of a patch shared by neighbours")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.retrieval_eval import run_retrieval_eval, run_scan_retrieval_eval
    from ctfm.errors import UsageError
    from ctfm.hub import load
    from ctfm.outputs import output_folder, refuse_overwrite
    from ctfm.provenance import describe_input, record_command
    from ctfm.reports import EXIT_OK, EXIT_PARTIAL

    out = output_folder(args.out)
    refuse_overwrite([out / name for name in ("metrics.csv", "per_query.csv", "neighbours.png")], args.overwrite)
    patch = args.patch_size and tuple(args.patch_size)
    if args.data[0].endswith(".npz"):
        from ctfm.data.medmnist import read_medmnist3d

        if len(args.data) > 1:
            raise UsageError(f"{args.data[1]}: a MedMNIST .npz holds every split; give one file")
        splits = read_medmnist3d(args.data[0])
        model = load(args.model, device=args.device)
        result = run_retrieval_eval(splits, model, out, ks=args.k, reduce=args.reduce or "mean", patch_size=patch)
    else:
        from ctfm.data.mir3d import read_3dmir
        from ctfm.transforms.preprocess import PATCH_SIZE

        scans = read_3dmir(args.data, args.msd_root, label_column=args.label_column, image_column=args.image_column)
        model = load(args.model, device=args.device)
        result = run_scan_retrieval_eval(
            scans, model, out, ks=args.k, reduce=args.reduce or "min", patch_size=patch or PATCH_SIZE,
            overlap=args.overlap,
        )  # fmt: skip
        for scan, problem in result.skipped:
            print(f"skipped {scan}: {problem}")
    print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    record_command(out, args, model=model, extra_inputs=[describe_input(path) for path in args.data])
    print(f"wrote {result.metrics_csv}, {result.per_query_csv}, {result.figure}")
    return EXIT_PARTIAL if result.skipped else EXIT_OK
