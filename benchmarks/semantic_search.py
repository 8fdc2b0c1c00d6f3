"""Semantic search of 10 query points against 5 target scans: cached target embeddings vs re-embedding per query.

    python benchmarks/semantic_search.py [--shape 200 512 512] [--spacing 1.5 0.8 0.8] [--queries 10] [--targets 5]
        [--init-filters 8] [--naive-queries 10]

Targets are synthetic torso CTs written as NIfTI (different seeds), by default at a clinical size: 200 x 512 x 512
voxels of 1.5 x 0.8 x 0.8 mm (z, y, x); queries are points of a sixth scan. Both methods run the same search
(read, preprocess, window similarity, heat map on the target's grid); the straightforward loop reads, preprocesses
and re-embeds every target for every query, ctfm's TargetCache does each once and keeps the result. Every query
costs the straightforward loop the same (it shares nothing between queries), so ``--naive-queries N`` times it on
the first N queries only and scales to all of them; the matches of those N are checked against the cached run's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctfm.analysis.semantic_search import check_inside, embed_point, search_target
from ctfm.analysis.tiles import TargetCache
from ctfm.data.sample import generate_ct, write_nifti
from ctfm.io.reader import read_ct
from ctfm.nn import ct_fm_encoder
from ctfm.transforms.preprocess import CTPreprocessing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=[200, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8], metavar=("Z", "Y", "X"))
    parser.add_argument("--naive-queries", type=int, help="time the re-embedding loop on this many queries, scaled")
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--targets", type=int, default=5)
    parser.add_argument("--init-filters", type=int, default=8)
    parser.add_argument("--patch-size", type=int, nargs=3, default=[24, 64, 64])
    parser.add_argument("--overlap", type=float, default=0.5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ct_fm_encoder(init_filters=args.init_filters).eval()
    folder = Path(tempfile.mkdtemp())
    scans = [
        write_nifti(generate_ct(tuple(args.shape), tuple(args.spacing), seed=s), folder / f"s{s}.nii.gz")
        for s in range(1 + args.targets)
    ]
    source, targets = scans[0], scans[1:]
    preprocess = CTPreprocessing(min_size=tuple(args.patch_size))
    scan = read_ct(source)
    volume = preprocess(scan)
    rng = np.random.default_rng(0)
    corners = np.array([[0, 0, 0], np.array(scan.shape[1:]) - 1], dtype=float)
    world = np.c_[corners, np.ones(2)] @ np.asarray(scan.affine).T
    low, high = np.sort(world[:, :3], axis=0)
    points = low + (high - low) * rng.uniform(0.3, 0.7, size=(args.queries, 3))
    for point in points:
        check_inside(scan, point, source)
    queries = [embed_point(model, volume, point, args.patch_size) for point in points]

    def run(cache_for_each_query: bool, queries: list) -> tuple[float, list]:
        shared = TargetCache(model, preprocess, args.patch_size, args.overlap)
        start = time.perf_counter()
        matches = []
        for query in queries:
            cache = TargetCache(model, preprocess, args.patch_size, args.overlap) if cache_for_each_query else shared
            matches.append([search_target(query, target, cache).point_mm for target in targets])
        return time.perf_counter() - start, matches

    timed = min(args.naive_queries or args.queries, args.queries)
    naive, naive_matches = run(True, queries[:timed])
    naive *= args.queries / timed
    cached, cached_matches = run(False, queries)
    assert np.allclose(np.array(naive_matches), np.array(cached_matches[:timed])), "cached and re-embedded differ"
    print(
        f"{args.queries} queries x {args.targets} targets of {'x'.join(map(str, args.shape))} voxels at "
        f"{'x'.join(map(str, args.spacing))} mm, patch {'x'.join(map(str, args.patch_size))}, overlap {args.overlap}, "
        f"init_filters {args.init_filters}"
    )
    scaled = f" (timed on {timed} queries, x {args.queries / timed:g})" if timed < args.queries else ""
    print(f"re-embed every target per query: {naive:7.1f} s{scaled}")
    print(f"ctfm cached target embeddings:   {cached:7.1f} s")
    print(f"ratio: {naive / cached:.1f}x faster (same matches)")


if __name__ == "__main__":
    main()
