"""``ctfm search QUERY --table embeddings.parquet -k 10``: the scans (or patches) of a table nearest to a query."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "search", help="nearest neighbours of a scan, a table row or an embedded patch in an embedding table"
    )
    parser.add_argument(
        "query", nargs="?", help="a scan path (embedded with the table's model) or a path that is a table row"
    )
    parser.add_argument("--table", required=True, help="embedding table written by `ctfm embed`")
    parser.add_argument(
        "--query-embedding",
        nargs="+",
        metavar="Q",
        help="an embedded query instead of QUERY: q.npy (with its q.npy.json), or TABLE SCAN PATCH (a patch row)",
    )
    parser.add_argument(
        "--patches", action="store_true", help="rank every patch of a `ctfm embed --patches` table (adds x/y/z_mm)"
    )
    parser.add_argument("-k", type=int, default=10, help="neighbours to return")
    parser.add_argument(
        "--index",
        choices=("auto", "exact", "hnsw", "ivf", "ivfpq"),
        default="auto",
        help="search method (auto: exact up to 2M vectors, then FAISS IVF-PQ)",
    )
    parser.add_argument("--model", help="model to embed a scan query with (default: the table's; must match it)")
    parser.add_argument("--out", help="CSV of query, rank, path[, patch, x_mm, y_mm, z_mm], similarity")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.neighbours import search_table
    from ctfm.analysis.query_vectors import read_query
    from ctfm.errors import UsageError

    if (args.query is None) == (args.query_embedding is None):
        raise UsageError("give either QUERY or --query-embedding")
    if args.out:
        from ctfm.outputs import refuse_overwrite

        refuse_overwrite([args.out], args.overwrite)
    vector = read_query(args.query_embedding) if args.query_embedding else None
    frame = search_table(
        args.query, args.table, k=args.k, kind=args.index, model=args.model, patches=args.patches,
        query_vector=vector,
    )  # fmt: skip
    if args.out:
        from ctfm.atomic import write_atomically

        write_atomically(args.out, lambda tmp: frame.to_csv(tmp, index=False))
    for row in frame.itertuples():
        where = f"  ({row.x_mm:.1f}, {row.y_mm:.1f}, {row.z_mm:.1f}) mm patch {row.patch}" if args.patches else ""
        print(f"{row.rank:3d}  {row.similarity:.4f}  {row.path}{where}")
    return 0
