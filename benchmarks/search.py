"""Cosine top-10 over synthetic 512-d embeddings: ctfm's exact and FAISS indexes against scikit-learn brute force.

    python benchmarks/search.py [--rows 1000000] [--dim 512] [--queries 100] [--indexes hnsw ivf ivfpq refine]

The vectors are a mixture of 1,000 Gaussian clusters (embeddings of a corpus cluster by anatomy and protocol; pure
noise has no neighbours worth finding); queries are new draws from the same mixture. scikit-learn's
``NearestNeighbors(metric="cosine", algorithm="brute")`` is the straightforward implementation, given the same
queries, the same batch and the same k. Reported: ms per query (one query, and the batch), recall@10 of each index
against the exact answer (scikit-learn's must agree), build time, index size, the memory the build added, and peak
RSS. Each index is freed before the next is built, so the peak stays near the table plus one index.
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np
from _common import best_seconds, peak_rss_mib, rss_mib

from ctfm.analysis.search import ExactIndex, FaissIndex, normalise

APPROXIMATE = {
    "hnsw": ("FAISS HNSW (M=32, efSearch 128)", "hnsw", {"ef_search": 128}),
    "ivf": ("FAISS IVF-Flat (nprobe 16)", "ivf", {"nprobe": 16}),
    "ivfpq": ("FAISS IVF-PQ (64x8 bit, nprobe 16)", "ivfpq", {"nprobe": 16, "pq_m": 64}),
    "refine": ("FAISS IVF-PQ + re-rank 4k", "ivfpq", {"nprobe": 16, "pq_m": 64, "refine": 4}),
}


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


class SklearnIndex:
    """scikit-learn brute force behind the same ``search(queries, k)`` call as ctfm's indexes."""

    def __init__(self, data: np.ndarray, k: int):
        from sklearn.neighbors import NearestNeighbors

        self.model = NearestNeighbors(n_neighbors=k, metric="cosine", algorithm="brute").fit(data)

    def search(self, q: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        distances, rows = self.model.kneighbors(q, n)
        return 1 - distances, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="database rows")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=100, help="queries in the batch")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--indexes", nargs="*", default=list(APPROXIMATE), choices=list(APPROXIMATE))
    args = parser.parse_args()
    import faiss

    k = args.k
    data = normalise(mixture(args.rows, args.dim, seed=1))  # stored normalised: indexes need not copy it
    queries = mixture(args.queries, args.dim, seed=2)
    table_mib = data.nbytes / 2**20
    print(f"{args.rows} x {args.dim} float32 ({table_mib:.0f} MiB), top-{k}, batch of {args.queries}")
    print(
        f"{'method':<36}{'build s':>9}{'ms/query (1)':>14}{'ms/query (batch)':>18}{'recall@10':>11}"
        f"{'size MiB':>10}{'+RSS MiB':>10}"
    )
    truth: np.ndarray | None = None

    def measure(name: str, build, size_mib) -> tuple[float, float, np.ndarray]:
        gc.collect()
        before = rss_mib()
        start = time.perf_counter()
        index = build()
        seconds = time.perf_counter() - start
        added = rss_mib() - before
        single = best_seconds(lambda: index.search(queries[:1], k), repeats=5)
        batch = best_seconds(lambda: index.search(queries, k), repeats=3)
        found = index.search(queries, k)[1]
        rec = recall(found, truth) if truth is not None else 1.0
        print(
            f"{name:<36}{seconds:>9.2f}{single * 1e3:>14.3f}{batch * 1e3 / args.queries:>18.3f}{rec:>11.3f}"
            f"{size_mib(index):>10.0f}{added:>10.0f}",
            flush=True,
        )
        return single, batch, found

    # scikit-learn runs last: its BLAS threads keep spinning for a while after each call and would slow whatever
    # ran next on a small machine. The float32 exact answer is the reference for recall; scikit-learn's must agree.
    plain_single, plain_batch, truth = measure(
        "ctfm exact, float32 only", lambda: ExactIndex(data, screen=False), lambda _: table_mib
    )
    screened = ExactIndex(data).screen_table is not None
    ex_single, ex_batch, exact = measure(
        f"ctfm exact{', bfloat16-screened' if screened else ''}", lambda: ExactIndex(data),
        lambda index: table_mib * (1.5 if index.screen_table is not None else 1.0),
    )  # fmt: skip
    for key in args.indexes:
        name, kind, options = APPROXIMATE[key]
        measure(
            name,
            lambda kind=kind, options=options: FaissIndex.build(data, kind, **options),
            lambda index: len(faiss.serialize_index(index.index)) / 2**20,
        )
    sk_single, sk_batch, sklearn = measure(
        "scikit-learn brute force", lambda: SklearnIndex(data, k), lambda _: table_mib
    )
    print(f"(exact and scikit-learn agree on {recall(exact, sklearn):.3f} of the top-{k})")
    print(f"exact batched vs scikit-learn batched (same batch, same k), per query: {sk_batch / ex_batch:.1f}x")
    print(f"exact batched per query vs scikit-learn one query at a time: {sk_single / (ex_batch / args.queries):.1f}x")
    print(f"exact single vs scikit-learn single: {sk_single / ex_single:.1f}x")
    print(f"bfloat16 screening vs float32 only, batched: {plain_batch / ex_batch:.1f}x")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
