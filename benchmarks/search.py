"""Cosine top-10 over synthetic 512-d embeddings: ctfm's exact and FAISS indexes against scikit-learn brute force.

    python benchmarks/search.py [--rows 1000000] [--dim 512] [--queries 100]

The vectors are a mixture of 1,000 Gaussian clusters (embeddings of a corpus cluster by anatomy and protocol; pure
noise has no neighbours worth finding); queries are new draws from the same mixture. scikit-learn's
``NearestNeighbors(metric="cosine", algorithm="brute")`` is the straightforward implementation. Reported: ms per query
(one query, and a batch), recall@10 of each approximate index against exact, build time, index size and peak RSS.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import best_seconds, peak_rss_mib

from ctfm.analysis.search import ExactIndex, FaissIndex


def mixture(rows: int, dim: int, seed: int, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).normal(size=(clusters, dim)).astype(np.float32)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 100_000):  # bounded temporary memory
        n = min(100_000, rows - start)
        out[start : start + n] = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim), np.float32)
    return out


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="database rows (the issue's goal: 1000000)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100, help="queries in the batch")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args()
    from sklearn.neighbors import NearestNeighbors

    k = args.k
    data = mixture(args.rows, args.dim, seed=1)
    queries = mixture(args.queries, args.dim, seed=2)
    print(f"{args.rows} x {args.dim} float32 ({data.nbytes / 2**20:.0f} MiB), top-{k}, batch of {args.queries}")
    print(f"{'method':<28}{'build s':>9}{'ms/query (1)':>14}{'ms/query (batch)':>18}{'recall@10':>11}{'size MiB':>10}")

    def row(name: str, build: float, single: float, batch: float, rec: float, size: float) -> None:
        print(
            f"{name:<28}{build:>9.2f}{single * 1e3:>14.3f}{batch * 1e3 / args.queries:>18.3f}{rec:>11.3f}{size:>10.0f}"
        )

    def measure(name: str, build, size_mib) -> tuple[float, float, np.ndarray]:
        start = time.perf_counter()
        index = build()
        seconds = time.perf_counter() - start
        single = best_seconds(lambda: index.search(queries[:1], k), repeats=10)
        batch = best_seconds(lambda: index.search(queries, k), repeats=3)
        found = index.search(queries, k)[1]
        row(name, seconds, single, batch, recall(found, truth) if truth is not None else 1.0, size_mib(index))
        return single, batch, found

    class SklearnIndex:
        def __init__(self):
            self.model = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(data)

        def search(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
            distances, rows = self.model.kneighbors(q, n)
            return 1 - distances, rows

    import faiss

    truth = None
    sk_single, sk_batch, truth = measure("scikit-learn brute force", SklearnIndex, lambda _: data.nbytes / 2**20)
    ex_single, ex_batch, exact = measure(
        "ctfm exact (torch matmul)", lambda: ExactIndex(data), lambda _: data.nbytes / 2**20
    )
    print(f"(exact and scikit-learn agree on {recall(exact, truth):.3f} of the top-{k})")
    for name, kind, options in (
        ("ctfm FAISS HNSW (M=32)", "hnsw", {"ef_search": 128}),
        ("ctfm FAISS IVF-Flat", "ivf", {"nprobe": 16}),
        ("ctfm FAISS IVF-PQ (64x8)", "ivfpq", {"nprobe": 16, "pq_m": 64}),
        ("ctfm FAISS IVF-PQ + refine", "ivfpq", {"nprobe": 16, "pq_m": 64, "refine": 4}),
    ):
        measure(
            name,
            lambda kind=kind, options=options: FaissIndex.build(data, kind, **options),
            lambda index: len(faiss.serialize_index(index.index)) / 2**20,
        )
    print(f"exact batched per query vs scikit-learn one query at a time: {sk_single / (ex_batch / args.queries):.1f}x")
    print(f"exact batched vs scikit-learn batched, per query: {sk_batch / ex_batch:.1f}x")
    print(f"exact single vs scikit-learn single: {sk_single / ex_single:.1f}x")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
