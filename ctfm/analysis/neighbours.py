"""Neighbours of one query in an embedding table, scan by scan or patch by patch: the work behind ``ctfm search``.

A patch-level search (``patches=True``, on a table written by ``ctfm embed --patches``) ranks every patch of every
scan, so each result also says where the patch sits: its centre in world mm (RAS, as
:class:`ctfm.embedding.PatchEmbeddings`). Such tables grow to tens of millions of vectors; ``kind="auto"`` keeps
exact search while it fits comfortably in memory and switches to a FAISS IVF-PQ index beyond.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.analysis.query_vectors import QueryVector, check_query
from ctfm.analysis.search import (
    ExactIndex,
    FaissIndex,
    load_index,
    save_index,
    search_excluding,
    table_fingerprint,
)
from ctfm.embedding_table import embed_like_table, embedding_matrix, read_settings, read_table, scan_key
from ctfm.errors import CTFMError

#: Above this many vectors ``kind="auto"`` uses IVF-PQ (1M x 512 float32 is 2 GB for exact search, 3 GB with its
#: bfloat16 screening copy; PQ codes 64 MB).
EXACT_UP_TO = 2_000_000


@dataclass
class SearchRows:
    """The vectors one search ranks, and for each its scan path (and patch index and RAS mm centre, for patches)."""

    vectors: np.ndarray
    paths: list[str]
    patch: np.ndarray | None = None
    centers_mm: np.ndarray | None = None


def scan_rows(frame: pd.DataFrame) -> SearchRows:
    return SearchRows(embedding_matrix(frame), list(frame["path"]))


def patch_rows(frame: pd.DataFrame, table: str | Path) -> SearchRows:
    """Every patch of every scan of a patch table as one row."""
    counts = frame["patch_embeddings"].map(len).to_numpy()
    if counts.sum() == 0:
        raise CTFMError(f"{table}: the patch table holds no patches")
    vectors = np.asarray(np.concatenate([np.stack(p) for p in frame["patch_embeddings"] if len(p)]), np.float32)
    centers = np.concatenate([np.stack(c) for c in frame["patch_centers_mm"] if len(c)]).astype(np.float64)
    paths = [path for path, n in zip(frame["path"], counts) for _ in range(n)]
    return SearchRows(vectors, paths, np.concatenate([np.arange(n) for n in counts]), centers)


def table_index(
    table: str | Path,
    kind: str = "exact",
    frame: pd.DataFrame | None = None,
    settings: dict | None = None,
    rows: SearchRows | None = None,
    level: str = "",
) -> ExactIndex | FaissIndex:
    """The ``kind`` index of ``table``: a saved FAISS index when it matches the table's rows, else built (and saved).

    ``level="patches"`` indexes ``rows`` (the table's patches) under its own file name.
    """
    if frame is None or settings is None:
        frame, settings = read_table(table, columns=["path", "embedding"])
    rows = rows or scan_rows(frame)
    if kind == "auto":
        kind = "exact" if len(rows.vectors) <= EXACT_UP_TO else "ivfpq"
    if kind == "exact":
        return ExactIndex(rows.vectors)
    labels = rows.paths if rows.patch is None else [f"{p}#{i}" for p, i in zip(rows.paths, rows.patch)]
    fingerprint = table_fingerprint(labels, settings)
    index = load_index(table, kind, fingerprint, level)
    if index is None:
        index = FaissIndex.build(rows.vectors, kind)
        save_index(index, table, fingerprint, level)
    return index


def search_table(
    query: str | Path | None,
    table: str | Path,
    *,
    k: int = 10,
    kind: str = "auto",
    model: str | None = None,
    patches: bool = False,
    query_vector: QueryVector | None = None,
) -> pd.DataFrame:
    """Rows ``query, rank, path, similarity`` of the ``k`` nearest table rows to the query.

    The query is ``query_vector`` (checked against the table: width, model, patch settings) or ``query``: a row of
    the table uses its stored vector and never retrieves itself; any other path is embedded with the table's model
    and settings (``model`` overrides where the model is loaded from; it must be the same network, checked by
    weight fingerprint). With ``patches=True`` every patch of the table is ranked, the rows gain ``patch`` and
    ``x_mm, y_mm, z_mm`` (its centre, RAS), and the query must be a vector (a patch of this table is left out).

    Args:
        query: a scan: a row of the table (by the path it was embedded under) or any scan on disk; ``None``
            with ``query_vector``.
        table: an embedding table written by ``ctfm embed`` (a Parquet folder or file).
        k: how many neighbours to return.
        kind: ``"exact"`` (cosine over every row); ``"hnsw"``, ``"ivf"`` or ``"ivfpq"`` (FAISS indexes, built
            once and saved beside the table); or ``"auto"`` (exact up to :data:`EXACT_UP_TO` rows, else IVF-PQ).
        model: where to load the table's model from when ``query`` must be embedded (default: the name the
            table records).
        patches: rank every patch of every scan (a table written with ``--patches``) instead of the scans.
        query_vector: a saved or computed query embedding instead of ``query``.

    Returns:
        One row per neighbour, best first: ``query``, ``rank`` (from 1), ``path``, ``similarity`` (cosine), and
        for patches ``patch`` and ``x_mm, y_mm, z_mm``.

    Raises:
        CTFMError: the query is neither a row nor a scan, or does not fit the table (width, model, settings).

    Examples:
        >>> import tempfile
        >>> from ctfm.analysis import search_table
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.embedding_table import embed_to_parquet
        >>> from ctfm.nn import ct_fm_encoder
        >>> folder = tempfile.mkdtemp()
        >>> scans = [write_nifti(generate_ct((24, 64, 64), seed=s), f"{folder}/scan{s}.nii.gz") for s in range(3)]
        >>> model = ct_fm_encoder(init_filters=4)  # ctfm embed --model ct-fm writes such tables
        >>> report = embed_to_parquet(scans, folder + "/table", model=model, patch_size=(8, 32, 32))
        >>> hits = search_table(scans[0], folder + "/table", k=2)  # the query's own row is never returned
        >>> list(hits.columns), hits["rank"].tolist()
        (['query', 'rank', 'path', 'similarity'], [1, 2])
    """
    columns = ["path", "embedding", *(("patch_embeddings", "patch_centers_mm") if patches else ())]
    if patches and not read_settings(table).get("patches"):
        raise CTFMError(f"{table}: has no patch embeddings (write it with `ctfm embed --patches`)")
    frame, settings = read_table(table, columns=columns)
    rows = patch_rows(frame, table) if patches else scan_rows(frame)
    exclude = None
    if query_vector is not None:
        check_query(query_vector, rows.vectors.shape[1], settings, table)
        vector, name = query_vector.vector[None], query_vector.name
        exclude = _own_row(query_vector, table, rows)
    elif patches:
        raise CTFMError(f"{query}: a patch search needs a patch as the query (--query-embedding q.npy or TABLE SCAN N)")
    elif query is not None and (row_name := _row_of(query, rows.paths)) is not None:
        row = rows.paths.index(row_name)
        vector, exclude, name = rows.vectors[[row]], np.array([row]), row_name
    elif query is not None and Path(query).exists():
        loaded = None
        if model is not None:
            from ctfm.hub import load

            loaded = load(model)
        vector, name = embed_like_table(query, settings, loaded)[None], str(query)
    else:
        raise CTFMError(f"{query}: neither a row of {table} nor a scan on disk")
    index = table_index(table, kind, frame, settings, rows, "patches" if patches else "")
    scores, found = search_excluding(index, vector, k, exclude)
    hits = found[0][found[0] >= 0]
    result = pd.DataFrame({"query": name, "rank": np.arange(1, len(hits) + 1), "path": [rows.paths[r] for r in hits]})
    if rows.patch is not None and rows.centers_mm is not None:
        result["patch"] = rows.patch[hits]
        result["x_mm"], result["y_mm"], result["z_mm"] = rows.centers_mm[hits].T
    result["similarity"] = scores[0][: len(hits)].astype(float)
    return result


def _row_of(query: str | Path, paths: list[str]) -> str | None:
    """The table's name for ``query``: as written, or resolved as ``ctfm embed`` stores it (``./a`` is ``/abs/a``)."""
    for name in (str(query), scan_key(query)):
        if name in paths:
            return name
    return None


def _own_row(query: QueryVector, table: str | Path, rows: SearchRows) -> np.ndarray | None:
    """The row of ``rows`` that is the query itself (a patch of this very table), to leave it out."""
    if query.patch_of is None or rows.patch is None or query.patch_of[0] != str(Path(table).resolve()):
        return None
    _, scan, patch = query.patch_of
    same = np.flatnonzero((np.asarray(rows.paths) == scan) & (rows.patch == patch))
    return same[:1] if len(same) else None
