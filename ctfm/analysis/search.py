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
import re
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


def at_least(scores: torch.Tensor, floor: torch.Tensor, block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.nonzero(scores >= floor[:, None], as_tuple=True)`` looking only inside the blocks of ``block``
    columns whose maximum reaches the row's floor: when few scores do, this skips most of a full-size comparison."""
    rows, columns = scores.shape
    blocks = columns // block
    head = scores[:, : blocks * block].view(rows, blocks, block)
    hit_row, hit_block = torch.nonzero(head.amax(dim=2).float() >= floor[:, None], as_tuple=True)
    inside, column = torch.nonzero(head[hit_row, hit_block].float() >= floor[hit_row, None], as_tuple=True)
    tail_row, tail_column = torch.nonzero(scores[:, blocks * block :].float() >= floor[:, None], as_tuple=True)
    return (
        torch.cat([hit_row[inside], tail_row]),
        torch.cat([hit_block[inside] * block + column, tail_column + blocks * block]),
    )


#: Bound on |bfloat16 score - float32 score| for unit vectors: inputs rounded to bfloat16 (relative error 2^-8
#: each, so at most 2 * 2^-8 + 2^-16 on the sum of |x_i q_i| <= 1), products summed in float32, and the score
#: rounded to bfloat16 (2^-8 more); 4 * 2^-8 leaves room for the float32 sums.
SCREEN_ERROR = 4 * 2.0**-8
#: Below this many rows the exact pass alone is fast enough that screening does not pay.
SCREEN_MIN_ROWS = 100_000


def fast_bfloat16_matmul() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX512-BF16 or AMX), where a bfloat16 product
    costs about half a float32 one; elsewhere bfloat16 is emulated and slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


class ExactIndex:
    """Exact cosine top-k: ``queries @ database.T`` a chunk of ``chunk_rows`` database rows at a time, each chunk's
    top-k by :func:`block_top_k`, merged into running top-k lists (memory: one chunk of scores per query batch).

    With ``screen`` (default: on CPUs with hardware bfloat16, for tables of at least :data:`SCREEN_MIN_ROWS`) a
    bfloat16 copy of the table is scored instead, about half the cost of a float32 product, and only the rows that
    can still be in the top k are scored again in float32. Every bfloat16 score is within :data:`SCREEN_ERROR` of
    the float32 one, so a row whose bfloat16 score is more than twice that below the running k-th best cannot be in
    the top k: the answer is exact, not approximate. A query with more than ``max_candidates`` such rows (a table of
    near-duplicates) is answered by the float32 pass instead and counted in ``fallbacks``. The bfloat16 copy costs
    half the table's memory again.
    """

    def __init__(
        self,
        vectors: np.ndarray,
        chunk_rows: int = 262_144,
        screen: bool | None = None,
        max_candidates: int = 65_536,
    ):
        self.vectors = torch.from_numpy(normalise(vectors))
        self.chunk_rows = chunk_rows
        if screen is None:
            screen = len(self.vectors) >= SCREEN_MIN_ROWS and fast_bfloat16_matmul()
        self.screen_table = self.vectors.to(torch.bfloat16) if screen else None
        self.max_candidates = max_candidates
        self.fallbacks = 0

    def __len__(self) -> int:
        return len(self.vectors)

    @torch.inference_mode()
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(normalise(queries))
        k = min(k, len(self.vectors))
        if self.screen_table is None or k == 0:
            scores, rows = self._top_k(q, k)
            return scores.numpy(), rows.numpy()
        return self._screened(q, k)

    def _top_k(self, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        best_scores = torch.full((len(q), 0), -torch.inf)
        best_rows = torch.zeros((len(q), 0), dtype=torch.long)
        for start in range(0, len(self.vectors), self.chunk_rows):
            scores = q @ self.vectors[start : start + self.chunk_rows].T
            values, indices = block_top_k(scores, min(k, scores.shape[1]))
            merged_scores = torch.cat([best_scores, values], dim=1)
            merged_rows = torch.cat([best_rows, indices + start], dim=1)
            keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
            best_scores, best_rows = merged_scores.gather(1, keep), merged_rows.gather(1, keep)
        return best_scores, best_rows

    def _screened(self, q: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """bfloat16 pass keeping every (query, row) within the bound of the running k-th best; float32 rescoring."""
        assert self.screen_table is not None
        coarse_q = q.to(torch.bfloat16)
        running = torch.full((len(q), 0), -torch.inf)  # the k best bfloat16 scores so far
        pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        counts = torch.zeros(len(q), dtype=torch.long)
        for start in range(0, len(self.screen_table), self.chunk_rows):
            scores = coarse_q @ self.screen_table[start : start + self.chunk_rows].T
            values, _ = block_top_k(scores, min(k, scores.shape[1]))
            running = torch.cat([running, values.float()], dim=1)
            running = running.topk(min(k, running.shape[1]), dim=1).values
            floor = running[:, -1] - 2 * SCREEN_ERROR if running.shape[1] == k else torch.full((len(q),), -torch.inf)
            floor[counts > self.max_candidates] = torch.inf  # given up on: answered in float32 below
            query, row = at_least(scores, floor)
            pairs.append((query, row + start))
            counts += torch.bincount(query, minlength=len(q))
        query, row = (torch.cat(parts) for parts in zip(*pairs))
        unsure = counts > self.max_candidates
        sure = ~unsure[query]  # the given-up queries' candidates are not rescored: the float32 pass answers them
        query, row = query[sure], row[sure]
        counts = torch.where(unsure, 0, counts)
        exact = torch.einsum("pd,pd->p", q[query], self.vectors[row])
        # one padded row of candidates per query, then the top k of each
        order = torch.argsort(query, stable=True)
        query, row, exact = query[order], row[order], exact[order]
        offsets = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(query)) - offsets[query]
        width = max(int(counts.max()), k)
        dense_scores = torch.full((len(q), width), -torch.inf)
        dense_rows = torch.zeros((len(q), width), dtype=torch.long)
        dense_scores[query, slot], dense_rows[query, slot] = exact, row
        top = dense_scores.topk(k, dim=1)
        scores, rows = top.values, dense_rows.gather(1, top.indices)
        if unsure.any():
            fallback = torch.nonzero(unsure).flatten()
            scores[fallback], rows[fallback] = self._top_k(q[fallback], k)
            self.fallbacks += len(fallback)
        return scores.numpy(), rows.numpy()


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
        index: faiss.Index
        if kind == "hnsw":
            hnsw = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
            hnsw.hnsw.efSearch = ef_search
            index = hnsw
        elif kind in ("ivf", "ivfpq"):
            nlist = nlist or max(1, min(rows // 39, int(4 * np.sqrt(rows))))
            quantizer = faiss.IndexFlatIP(dim)
            ivf: faiss.IndexIVF
            if kind == "ivf":
                ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
            else:
                ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, pq_m or dim // 8, 8, metric)
            sample = np.random.default_rng(0).permutation(rows)[:train_rows]
            ivf.train(vectors[np.sort(sample)])
            ivf.nprobe = nprobe
            index = ivf
        else:
            raise ValueError(f"unknown FAISS index kind {kind!r}; choose hnsw, ivf or ivfpq")
        if refine:
            refined = faiss.IndexRefineFlat(index)
            refined.k_factor = refine
            index = refined
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
