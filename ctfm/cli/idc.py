"""``ctfm idc query|download|convert``: from an SQL selection on the IDC index to a pretraining datalist."""

from __future__ import annotations

import argparse


def _pair(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import positive_int

    parser = subparsers.add_parser("idc", help="select, download and convert CT series from the Imaging Data Commons")
    commands = parser.add_subparsers(dest="idc_command", metavar="STEP", required=True)

    query = commands.add_parser("query", help="run an SQL selection (shipped, by name, or a file) on the IDC index")
    query.add_argument("sql", help="name of a shipped selection (`ctfm idc queries` lists them) or an SQL file")
    query.add_argument(
        "--param",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="value of a $NAME parameter of the SQL file (repeatable)",
    )
    query.add_argument(
        "--table",
        type=_pair,
        action="append",
        default=[],
        metavar="NAME=PARQUET",
        help="make a parquet file available as table NAME (e.g. your copy of ct_index)",
    )
    query.add_argument(
        "--no-fetch", action="store_true", help="never fetch tables that idc-index-data does not bundle (stay offline)"
    )
    query.add_argument("--out", help="selection CSV to write; without it only the summary is printed")
    query.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    query.set_defaults(func=run_query)

    queries = commands.add_parser("queries", help="list the SQL selections shipped with ctfm")
    queries.set_defaults(func=run_queries)

    download = commands.add_parser("download", help="download the series of a selection CSV with s5cmd")
    download.add_argument("selection", help="selection CSV written by `ctfm idc query`")
    download.add_argument("--out", required=True, help="download folder: one sub-folder per series")
    download.add_argument("--endpoint-url", help="S3 endpoint of a mirror (default: the public IDC buckets on AWS)")
    download.add_argument("--workers", type=positive_int, default=64, help="parallel transfers")
    download.add_argument("--retries", type=int, default=3, help="extra rounds for incomplete series")
    download.set_defaults(func=run_download)

    convert = commands.add_parser("convert", help="convert downloaded DICOM series to NIfTI and write the datalist")
    convert.add_argument("dicom_dir", help="download folder of `ctfm idc download` (or any folder of series)")
    convert.add_argument("--out", required=True, help="folder for the volumes, their JSON sidecars and datalist.csv")
    convert.add_argument("--workers", type=positive_int, default=None, help="conversion processes (default: CPU count)")
    convert.set_defaults(func=run_convert)


def run_query(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctfm.idc.query import find_sql, query, summarize
    from ctfm.idc.selection import write_csv_atomically
    from ctfm.outputs import refuse_overwrite

    if args.out:
        refuse_overwrite([args.out], args.overwrite)

    selection = query(find_sql(args.sql), dict(args.param), tables=dict(args.table), fetch=not args.no_fetch)
    print(f"{args.sql}: {summarize(selection)}")
    if args.out:
        write_csv_atomically(selection, Path(args.out))
        print(f"wrote {len(selection):,} rows to {args.out}")
    return 0


def run_queries(args: argparse.Namespace) -> int:
    from ctfm.idc.query import QUERIES_DIR, shipped_queries

    print(f"SQL selections in {QUERIES_DIR} (run one with `ctfm idc query NAME`; copy one to edit it):")
    for name, summary in shipped_queries().items():
        print(f"  {name:26s} {summary}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from ctfm.idc.download import REPORT_FILE, download
    from ctfm.idc.query import summarize
    from ctfm.idc.selection import read_selection
    from ctfm.provenance import describe_input, record_command

    selection = read_selection(args.selection)
    print(f"{args.selection}: {summarize(selection)}", flush=True)
    report = download(selection, args.out, endpoint_url=args.endpoint_url, workers=args.workers, retries=args.retries)
    series = [{"series_instance_uid": row.item, "status": row.status} for row in report.rows()]
    record_command(report.out_dir, args, extra_inputs=[describe_input(args.selection), *series], merge=True)
    print(report.summary())
    if not report.ok:
        print(f"details in {report.out_dir / REPORT_FILE}; run the same command again to retry")
    return report.exit_code


def run_convert(args: argparse.Namespace) -> int:
    from ctfm.idc.convert import REPORT_FILE, convert
    from ctfm.idc.errors import IDCError
    from ctfm.provenance import record_command

    report = convert(args.dicom_dir, args.out, workers=args.workers)
    series = [{"series": row.item, "status": row.status} for row in report.rows()]
    record_command(report.out_dir, args, extra_inputs=series, merge=True)
    if not report.done:  # one line, not a list of every failure
        problems = report.problems
        if not problems:
            raise IDCError(f"{args.dicom_dir}: no DICOM series found (no folder with files)")
        raise IDCError(
            f"{args.dicom_dir}: none of the {len(problems)} series could be converted (first: {problems[0].reason}); "
            f"every reason is in {report.out_dir / REPORT_FILE}"
        )
    print(report.summary())
    return report.exit_code
