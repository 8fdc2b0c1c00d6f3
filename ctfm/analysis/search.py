"""Cosine top-k over a table of embeddings: exact (chunked matrix products) or approximate (FAISS HNSW, IVF, IVF-PQ).

Every index answers ``search(queries, k) -> (similarities, rows)`` on L2-normalised vectors, so inner product is
cosine similarity. The exact index keeps memory bounded by scoring the database a chunk of rows at a time and
merging running top-k lists; FAISS indexes trade a little recall for speed (HNSW) or memory (IVF-PQ, for patch
tables of tens of millions of rows). A FAISS index is saved next to its table with a JSON sidecar recording the
table it came from, and loading refuses an index whose table has changed since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError

IndexKind = Literal["exact", "hnsw", "ivf", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = ("exact", "hnsw", "ivf", "ivfpq")


class VectorIndex(Protocol):
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, C order); zero rows stay zero. Rows already of unit length are not
    copied, so a normalised 2 GB table does not become 4 GB in memory."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"expected a (rows, dim) array, got shape {vectors.shape}")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]  # no (rows, dim) temporary
    if np.all(np.abs(norms - 1.0) <= 1e-6):
        return vectors
    return vectors / np.maximum(norms, 1e-12)


def block_top_k(scores: torch.Tensor, k: int, block: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``scores.topk(k, dim=1)`` without sorting every column: the k best of a row lie in the k blocks of
    ``block`` columns with the largest maxima, so only those ``k * block`` columns are ranked.

    On a CPU a full ``topk`` over 100 x 262,144 scores costs about a quarter of the matrix product that made them;
    one max per block and a top-k over ``k * block`` columns cost about a tenth of that.
    """
    rows, columns = scores.shape
    blocks = columns // block
    if blocks <= k:
        return scores.topk(k, dim=1)
    head = scores[:, : blocks * block].view(rows, blocks, block)
    best_blocks = head.amax(dim=2).topk(k, dim=1).indices
    candidates = (best_blocks[:, :, None] * block + torch.arange(block)).flatten(1)
    tail = torch.arange(blocks * block, columns).expand(rows, -1)  # the columns after the last whole block
    candidates = torch.cat([candidates, tail], dim=1)
    top = scores.gather(1, candidates).topk(k, dim=1)
    return top.values, candidates.gather(1, top.indices)


class ExactIndex:
    """Exact cosine top-k: ``queries @ database.T`` a chunk of ``chunk_rows`` database rows at a time, each chunk's
    top-k by :func:`block_top_k`, merged into running top-k lists (memory: one chunk of scores per query batch)."""

    def __init__(self, vectors: np.ndarray, chunk_rows: int = 262_144):
        self.vectors = torch.from_numpy(normalise(vectors))
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return len(self.vectors)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(normalise(queries))
        k = min(k, len(self.vectors))
        best_scores = torch.full((len(q), 0), -torch.inf)
        best_rows = torch.zeros((len(q), 0), dtype=torch.long)
        for start in range(0, len(self.vectors), self.chunk_rows):
            scores = q @ self.vectors[start : start + self.chunk_rows].T
            values, indices = block_top_k(scores, min(k, scores.shape[1]))
            merged_scores = torch.cat([best_scores, values], dim=1)
            merged_rows = torch.cat([best_rows, indices + start], dim=1)
            keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
            best_scores, best_rows = merged_scores.gather(1, keep), merged_rows.gather(1, keep)
        return best_scores.numpy(), best_rows.numpy()


class FaissIndex:
    """A FAISS inner-product index over normalised vectors; ``kind`` is ``hnsw``, ``ivf`` or ``ivfpq``."""

    def __init__(self, index: Any, kind: str):
        self.index, self.kind = index, kind

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        kind: str = "hnsw",
        *,
        hnsw_m: int = 32,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int = 16,
        pq_m: int | None = None,
        refine: int = 0,
        train_rows: int = 100_000,
    ) -> FaissIndex:
        """Build (and train, for IVF, on at most ``train_rows`` rows) an index.

        ``nlist`` defaults to about 4 sqrt(rows) lists; ``pq_m`` sub-quantisers of 8 bits (default dim / 8).
        ``refine > 0`` re-ranks ``refine * k`` candidates with the exact vectors (which it then also stores).
        """
        import faiss

        vectors = normalise(vectors)
        rows, dim = vectors.shape
        metric = faiss.METRIC_INNER_PRODUCT
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
            index.hnsw.efSearch = ef_search
        elif kind in ("ivf", "ivfpq"):
            nlist = nlist or max(1, min(rows // 39, int(4 * np.sqrt(rows))))
            quantizer = faiss.IndexFlatIP(dim)
            if kind == "ivf":
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
            else:
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m or dim // 8, 8, metric)
            sample = np.random.default_rng(0).permutation(rows)[:train_rows]
            index.train(vectors[np.sort(sample)])
            index.nprobe = nprobe
        else:
            raise ValueError(f"unknown FAISS index kind {kind!r}; choose hnsw, ivf or ivfpq")
        if refine:
            index = faiss.IndexRefineFlat(index)
            index.k_factor = refine
        index.add(vectors)
        return cls(index, kind)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(normalise(queries), min(k, len(self)))
        return scores, rows.astype(np.int64)


def build_index(vectors: np.ndarray, kind: str = "exact", **options: Any) -> ExactIndex | FaissIndex:
    """An index of ``kind`` (one of :data:`INDEX_KINDS`) over ``vectors``; an empty table is refused."""
    if len(vectors) == 0:
        raise CTFMError("cannot index an empty table")
    if kind == "exact":
        return ExactIndex(vectors, **options)
    return FaissIndex.build(vectors, kind, **options)


def search_excluding(
    index: VectorIndex, queries: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` per query with row ``exclude[i]`` (the query itself, -1 for none) never among query ``i``'s."""
    if exclude is None:
        return index.search(queries, k)
    scores, rows = index.search(queries, k + 1)
    keep = rows != np.asarray(exclude)[:, None]
    out_scores = np.full((len(rows), k), -np.inf, dtype=np.float32)
    out_rows = np.full((len(rows), k), -1, dtype=np.int64)
    for i in range(len(rows)):
        s, r = scores[i][keep[i]][:k], rows[i][keep[i]][:k]
        out_scores[i, : len(s)], out_rows[i, : len(r)] = s, r
    return out_scores, out_rows


def table_fingerprint(paths: list[str], settings: dict[str, Any]) -> str:
    """What an index must have been built from: the table's rows (in order) and its model."""
    digest = hashlib.sha256(settings.get("model_sha256", "").encode())
    for path in paths:
        digest.update(path.encode() + b"\0")
    return digest.hexdigest()


def index_file(table: str | Path, kind: str, level: str = "") -> Path:
    """Where the ``kind`` index of ``table`` lives: beside it, ``embeddings.parquet.hnsw.faiss`` (scan rows) or,
    with ``level="patches"``, ``embeddings.parquet.patches.hnsw.faiss`` (one vector per patch)."""
    table = Path(table)
    return table.with_name(f"{table.name}.{level + '.' if level else ''}{kind}.faiss")


def save_index(index: FaissIndex, table: str | Path, fingerprint: str, level: str = "") -> Path:
    """Write the index beside its table with a sidecar naming the table and its fingerprint."""
    import faiss

    path = index_file(table, index.kind, level)
    write_atomically(path, lambda tmp: faiss.write_index(index.index, str(tmp)))
    sidecar = {"table": str(table), "table_fingerprint": fingerprint, "kind": index.kind, "rows": len(index)}
    if level:
        sidecar["level"] = level
    write_atomically(path.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(sidecar, indent=2)))
    return path


def load_index(table: str | Path, kind: str, fingerprint: str, level: str = "") -> FaissIndex | None:
    """The saved ``kind`` index of ``table``, or None when there is none or it was built from other rows."""
    import faiss

    path = index_file(table, kind, level)
    sidecar = path.with_suffix(".json")
    if not (path.exists() and sidecar.exists()):
        return None
    if json.loads(sidecar.read_text()).get("table_fingerprint") != fingerprint:
        return None
    return FaissIndex(faiss.read_index(str(path)), kind)
