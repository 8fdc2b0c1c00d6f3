"""``ctfm segment``: CT scans -> whole-body label maps (TotalSegmentator classes) with the published model."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import fraction, positive_int
    from ctfm.io.naming import NAMING_HELP
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser(
        "segment",
        help="segment CT scans into label maps on their own grid (ct-fm-whole-body or your export)",
        description="Segment CT scans into label maps on their own grid. " + NAMING_HELP,
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="NIfTI / NRRD / MHA files or DICOM series folders")
    parser.add_argument("--model", default="ct-fm-whole-body", help="model name or Hub-format folder of a SegResNetDS")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--roi", type=int, nargs=3, default=(96, 160, 160), metavar=("Z", "Y", "X"), help="window")
    parser.add_argument("--overlap", type=fraction, default=0.625, help="sliding-window overlap (Gaussian blending)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--classes", nargs="+", metavar="NAME", help="keep only these classes (others become 0)")
    parser.add_argument("--split-masks", action="store_true", help="also write <name>/<class>.nii.gz binary masks")
    parser.add_argument(
        "--no-largest-component", action="store_true", help="keep every component, not only each class's largest"
    )
    parser.add_argument("--preview", action="store_true", help="write <name>.png: three slices with the labels")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument(
        "--output-type", choices=("nifti", "dicom-seg"), default="nifti",
        help="nifti: <name>.nii.gz label map; dicom-seg: <name>.seg.dcm, a DICOM SEG of a DICOM series input",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.io.naming import output_names
    from ctfm.provenance import record_command
    from ctfm.segmentation import load_segmenter
    from ctfm.segmentation_files import segment_to_files

    segmenter = load_segmenter(args.model, device=args.device)
    report = segment_to_files(
        args.inputs,
        args.out,
        model=segmenter,
        roi_size=tuple(args.roi),
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        classes=args.classes,
        split_masks=args.split_masks,
        largest_component=not args.no_largest_component,
        preview=args.preview,
        overwrite=args.overwrite,
        output_type=args.output_type,
    )
    record_command(
        report.out, args, inputs=args.inputs, output_names=output_names(args.inputs), model=segmenter,
        preprocessing=segmenter.preprocessing,
    )  # fmt: skip
    print(report.summary())
    return report.exit_code
