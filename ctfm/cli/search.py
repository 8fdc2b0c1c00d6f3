"""``ctfm search QUERY --table embeddings.parquet -k 10``: the scans of a table most similar to a scan or a row."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="nearest neighbours of a scan (or a table row) in an embedding table")
    parser.add_argument("query", help="a scan path (embedded with the table's model) or a path that is a table row")
    parser.add_argument("--table", required=True, help="embedding table written by `ctfm embed`")
    parser.add_argument("-k", type=int, default=10, help="neighbours to return")
    parser.add_argument("--index", choices=("exact", "hnsw", "ivf", "ivfpq"), default="exact", help="search method")
    parser.add_argument("--model", help="model to embed a scan query with (default: the table's; must match it)")
    parser.add_argument("--out", help="CSV of query, rank, path, similarity")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ctfm.analysis.neighbours import search_table

    frame = search_table(args.query, args.table, k=args.k, kind=args.index, model=args.model)
    if args.out:
        from ctfm.atomic import write_atomically

        write_atomically(args.out, lambda tmp: frame.to_csv(tmp, index=False))
    for row in frame.itertuples():
        print(f"{row.rank:3d}  {row.similarity:.4f}  {row.path}")
    return 0
