"""``ctfm retrieval-eval DATA.npz --model M --out DIR``: the CT-FM retrieval protocol on a MedMNIST 3D file."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "retrieval-eval", help="retrieval metrics (P, AP, HR, F1 at k) of a model on OrganMNIST3D-style .npz"
    )
    parser.add_argument("data", help="MedMNIST 3D .npz (train_images/train_labels, val_*, test_*)")
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument("--out", required=True, help="folder for metrics.csv, per_query.csv and neighbours.png")
    parser.add_argument("-k", type=int, nargs="+", default=[3, 5, 10], help="cut-offs")
    parser.add_argument("--reduce", choices=("mean", "min", "max"), default="mean", help="patch -> volume reduction")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: the volume size")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.retrieval_eval import run_retrieval_eval
    from ctfm.data.medmnist import read_medmnist3d
    from ctfm.hub import load

    splits = read_medmnist3d(args.data)
    model = load(args.model, device=args.device)
    result = run_retrieval_eval(
        splits, model, args.out, ks=args.k, reduce=args.reduce, patch_size=args.patch_size and tuple(args.patch_size)
    )
    print(result.summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"wrote {result.metrics_csv}, {result.per_query_csv}, {result.figure}")
    return 0
