"""``ctfm pseudo-label TARGET... --prototypes prototypes.pt --model M --out DIR``: label maps from patch similarity."""

from __future__ import annotations

import argparse

from ctfm.cli.prototypes import class_pair


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.io.naming import NAMING_HELP
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser(
        "pseudo-label",
        help="label maps, probability maps and overlays of scans from their similarity to prototypes",
        description="Label maps, probability maps and overlays of scans from their similarity to prototypes. "
        + NAMING_HELP,
    )
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="scans to label")
    parser.add_argument("--prototypes", required=True, help="file `ctfm prototypes` wrote")
    parser.add_argument("--model", default="ct-fm", help="the model that made the prototypes")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--aggregation", choices=("mean", "max"), default="mean", help="of overlapping tiles")
    parser.add_argument("--normalisation", choices=("minmax", "sigmoid", "softmax"), default="minmax")
    parser.add_argument("--temperature", type=float, default=0.01, help="of sigmoid and softmax")
    parser.add_argument("--sigma-mm", type=float, default=2.0, help="Gaussian smoothing before thresholding (0: none)")
    parser.add_argument("--threshold", choices=("global", "otsu", "multi-level"), default="otsu")
    parser.add_argument("--level", type=float, default=0.5, help="the global threshold")
    parser.add_argument("--levels", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="multi-level thresholds (default: multi-Otsu per class)")  # fmt: skip
    parser.add_argument("--all-components", action="store_true", help="keep every component, not each class's largest")
    parser.add_argument(
        "--reference-dir",
        help="reference label maps named like the targets' outputs (<name>.nii.gz), on their grids: writes "
        "evaluation.csv "
        "(Dice, ASD per class). Classes are compared by name: a class's reference voxels carry the label value "
        "the prototypes were built from (`ctfm prototypes --classes`), or the one --reference-classes gives. "
        "A reference with none of those values is refused; a target without a reference is labelled and its "
        "rows say 'unscored'",
    )
    parser.add_argument(
        "--reference-classes", nargs="+", type=class_pair, metavar="VALUE=NAME",
        help="label values of the prototypes' classes in the reference maps, e.g. 5=liver 51=heart "
        "(default: the values the prototypes were built from)",
    )  # fmt: skip
    parser.add_argument(
        "--totalsegmentator-layout", metavar="DIR",
        help="also write the labelled targets as training subjects of a TotalSegmentator v2 folder",
    )  # fmt: skip
    parser.add_argument("--no-preview", action="store_true", help="do not write <name>.png")
    parser.add_argument(
        "--output-type", choices=("nifti", "dicom-seg"), default="nifti",
        help="nifti: <name>.nii.gz label map; dicom-seg: <name>.seg.dcm, a DICOM SEG of a DICOM series target",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.prototypes import Prototypes
    from ctfm.analysis.pseudo_labels import PostProcessing, pseudo_label
    from ctfm.hub import load
    from ctfm.io.dicom_seg import model_name
    from ctfm.io.naming import output_names
    from ctfm.provenance import describe_input, record_command

    prototypes = Prototypes.load(args.prototypes)
    model = load(args.model, device=args.device)
    post = PostProcessing(
        sigma_mm=args.sigma_mm, threshold=args.threshold, level=args.level,
        levels=tuple(args.levels) if args.levels else None, largest_component=not args.all_components,
    )  # fmt: skip
    report = pseudo_label(
        args.targets, prototypes, model, args.out, aggregation=args.aggregation, normalisation=args.normalisation,
        temperature=args.temperature, post=post, reference_dir=args.reference_dir,
        reference_classes=dict(args.reference_classes) if args.reference_classes else None,
        totalsegmentator_layout=args.totalsegmentator_layout, preview=not args.no_preview,
        prototypes_path=args.prototypes, overwrite=args.overwrite, output_type=args.output_type,
        model_name=model_name(args.model),
    )  # fmt: skip
    record_command(
        report.out, args, inputs=args.targets, output_names=output_names(args.targets), model=model,
        extra_inputs=[{**describe_input(args.prototypes), "role": "prototypes"}],
    )  # fmt: skip
    if report.evaluation is not None:
        scored = report.evaluation[report.evaluation["status"] == "scored"]
        if len(scored):
            means = scored.groupby("class", sort=False)[["dice", "asd_mm"]].mean()
            print(means.to_string(float_format=lambda v: f"{v:.3f}"))
        unscored = report.evaluation.loc[report.evaluation["status"] == "unscored", "image"].nunique()
        if unscored:
            print(f"{unscored} target(s) unscored (no usable reference): see {args.out}/evaluation.csv")
    print(report.summary())
    return report.exit_code
