"""``ctfm prepare``: preprocess the scans of a datalist once into the pretraining cache.

Run it before ``lighter fit`` to preprocess with many processes ahead of training (the data module would otherwise
do it in ``prepare_data``); parallel runs on the same cache are safe.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import positive_int

    parser = subparsers.add_parser(
        "prepare",
        help="preprocess a datalist's scans into the pretraining cache",
        description="Resample, window, crop and pad every scan of DATALIST (a CSV with an 'image' column) once, "
        "into uncompressed memory-mappable arrays that pretraining samples patches from. Bad scans are skipped "
        "and reported; the run goes on. A re-run reuses the cached scans; the record of the runs is "
        "provenance.json in the cache folder.",
    )
    parser.add_argument("datalist", help="CSV with an 'image' column; relative paths resolve against its folder")
    parser.add_argument(
        "--cache-dir",
        help="cache folder (default: $CTFM_CACHE_DIR, else ctfm_cache/ beside DATALIST, where pretraining looks)",
    )
    parser.add_argument("--workers", type=positive_int, default=1, help="scans preprocessed in parallel")
    parser.add_argument(
        "--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"), help="voxel spacing in mm (default: 3 1 1)"
    )
    parser.add_argument(
        "--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="pad to this patch (default: 24 128 128)"
    )
    parser.add_argument("--retry-failed", action="store_true", help="read scans that failed before again")
    parser.add_argument("--report", help="write a CSV of every scan's status and reason here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctfm.data.cache import PreprocessCache, default_cache_dir
    from ctfm.data.datalist import read_datalist
    from ctfm.errors import CTFMError
    from ctfm.provenance import record_command
    from ctfm.transforms.preprocess import PATCH_SIZE, PRETRAINING_SPACING, CTPreprocessing

    sources = read_datalist(args.datalist)["image"].tolist()
    preprocessing = CTPreprocessing(
        spacing=tuple(args.spacing or PRETRAINING_SPACING), min_size=tuple(args.patch_size or PATCH_SIZE)
    )
    cache = PreprocessCache(Path(args.cache_dir) if args.cache_dir else default_cache_dir(args.datalist), preprocessing)
    report = cache.prepare(sources, workers=args.workers, retry_failed=args.retry_failed)
    record_command(cache.root, args, inputs=sources, preprocessing=preprocessing, merge=True)
    print(f"cache: {cache.root}")
    print(report.summary())
    if args.report:
        report.write_csv(args.report)
        print(f"report: {args.report}")
    if not report.scans:
        raise CTFMError(f"{args.datalist}: none of the {len(sources)} scans could be preprocessed")
    return report.exit_code
