"""``ctfm semantic-search SOURCE --point X Y Z TARGET... --model M --out DIR``: a point's anatomy in other scans.

``ctfm semantic-search TARGET... --query-embedding q.npy`` searches for a patch embedded before instead (a vector
saved with ``--save-query``, or ``--query-embedding TABLE SCAN PATCH``: a patch of a ``ctfm embed --patches`` table).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable


class _IntermixedParser(argparse.ArgumentParser):
    """Scans may come before and after ``--point X Y Z``: ``SOURCE --point X Y Z TARGET...`` fills both the source
    and the (optional, with ``--query-embedding``) targets, which plain parsing cannot once targets may be empty."""

    _inside = False

    # one signature where typeshed has three overloads (for namespace subclasses, which ctfm never passes)
    def parse_known_args(  # type: ignore[override]
        self, args: Iterable[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        if self._inside:
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(subparsers: argparse._SubParsersAction) -> None:
    from ctfm.cli.arguments import fraction
    from ctfm.io.naming import NAMING_HELP
    from ctfm.outputs import OVERWRITE_HELP

    parser = subparsers.add_parser(
        "semantic-search",
        help="heat maps of where the anatomy at a point of one scan appears in target scans",
        description="Heat maps of where the anatomy at a point of one scan appears in target scans: matches.csv and "
        "<name>_heatmap.nii.gz / .png per target. " + NAMING_HELP + " Unreadable targets are skipped and named.",
    )
    parser.__class__ = _IntermixedParser
    parser.add_argument("source", help="scan holding the query point (with --query-embedding: the first target)")
    parser.add_argument("--point", type=float, nargs=3, metavar=("X", "Y", "Z"), help="world mm (RAS)")
    parser.add_argument(
        "--query-embedding",
        nargs="+",
        metavar="Q",
        help="an embedded patch instead of SOURCE --point: q.npy (with its q.npy.json) or TABLE SCAN PATCH",
    )
    parser.add_argument("--save-query", metavar="Q.npy", help="also save the point's embedding (and Q.npy.json)")
    parser.add_argument("targets", nargs="*", help="scans to search")
    parser.add_argument("--model", default="ct-fm", help="model name (see `ctfm models`) or local path")
    parser.add_argument("--out", required=True, help="folder for matches.csv and one heat-map NIfTI + PNG per target")
    parser.add_argument("--mask-dir", help="organ masks named like the targets, on their grids: adds OCD columns")
    parser.add_argument("--lps", action="store_true", help="--point and the csv are DICOM/ITK (LPS) coordinates")
    parser.add_argument("--patch-size", type=int, nargs=3, default=(24, 64, 64), metavar=("Z", "Y", "X"))
    parser.add_argument("--overlap", type=fraction, default=0.5, help="fraction of a tile shared by its neighbours")
    parser.add_argument("--native-spacing", action="store_true", help="do not resample to 3 x 1 x 1 mm")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ctfm.analysis.query_vectors import read_query, save_query_vector
    from ctfm.analysis.semantic_search import point_query, run_semantic_search, search_outputs
    from ctfm.analysis.tiles import TargetCache
    from ctfm.errors import UsageError
    from ctfm.hub import load
    from ctfm.io.naming import output_names
    from ctfm.outputs import output_folder, refuse_overwrite
    from ctfm.provenance import record_command
    from ctfm.reports import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
    from ctfm.transforms.preprocess import CTPreprocessing

    if (args.point is None) == (args.query_embedding is None):
        raise UsageError("give either SOURCE --point X Y Z or --query-embedding")
    if args.query_embedding is not None and args.save_query:
        raise UsageError("--save-query saves a point's embedding; --query-embedding already is one")
    targets = args.targets if args.point is not None else [args.source, *args.targets]
    if not targets:
        raise UsageError("no target scans to search")
    out = output_folder(args.out)
    refuse_overwrite([*search_outputs(out, targets), *([args.save_query] if args.save_query else [])], args.overwrite)
    model = load(args.model, device=args.device)
    preprocess = CTPreprocessing(spacing=None) if args.native_spacing else CTPreprocessing()
    # A saved query records the model as given: a registry name, else the folder or file it was loaded from.
    model_name = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    cache = TargetCache(
        model, preprocess, args.patch_size, args.overlap, folder=Path(args.out) / "cache", model_name=model_name
    )
    if args.point is not None:
        query = point_query(args.source, args.point, model, cache, args.lps)
        if args.save_query:
            print(f"saved the query embedding to {save_query_vector(args.save_query, query)}")
    else:
        query = read_query(args.query_embedding)
    skipped: list[tuple[str, str]] = []
    # The source and point go along with their query so that each picture shows where the query lies.
    table = run_semantic_search(
        args.source if args.point is not None else None, args.point, targets, model, out, lps=args.lps,
        mask_dir=args.mask_dir, cache=cache, query=query, overwrite=args.overwrite, skipped=skipped,
    )  # fmt: skip
    record_command(out, args, inputs=targets, output_names=output_names(targets), model=model, preprocessing=preprocess)
    if len(table):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"{len(table)} searched, {len(skipped)} skipped; outputs in {out}")
    for target, reason in skipped:
        print(f"  skipped {target}: {reason}")
    return EXIT_OK if not skipped else EXIT_PARTIAL if len(table) else EXIT_FAILED
