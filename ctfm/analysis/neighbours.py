"""Neighbours of one query in an embedding table: the work behind ``ctfm search``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.analysis.search import (
    ExactIndex,
    FaissIndex,
    load_index,
    save_index,
    search_excluding,
    table_fingerprint,
)
from ctfm.embedding_table import embed_like_table, embedding_matrix, read_table
from ctfm.errors import CTFMError


def table_index(
    table: str | Path, kind: str = "exact", frame: pd.DataFrame | None = None, settings: dict | None = None
) -> ExactIndex | FaissIndex:
    """The ``kind`` index of ``table``: a saved FAISS index when it matches the table's rows, else built (and saved)."""
    if frame is None or settings is None:
        frame, settings = read_table(table, columns=["path", "embedding"])
    vectors = embedding_matrix(frame)
    if kind == "exact":
        return ExactIndex(vectors)
    fingerprint = table_fingerprint(list(frame["path"]), settings)
    index = load_index(table, kind, fingerprint)
    if index is None:
        index = FaissIndex.build(vectors, kind)
        save_index(index, table, fingerprint)
    return index


def search_table(
    query: str | Path, table: str | Path, *, k: int = 10, kind: str = "exact", model: str | None = None
) -> pd.DataFrame:
    """Rows ``query, rank, path, similarity`` of the ``k`` nearest table rows to ``query``.

    A query that is a row of the table uses its stored vector and never retrieves itself; any other path is embedded
    with the table's model and settings (``model`` overrides where the model is loaded from; it must be the same
    network, checked by weight fingerprint).
    """
    frame, settings = read_table(table, columns=["path", "embedding"])
    paths = list(frame["path"])
    if str(query) in paths:
        row = paths.index(str(query))
        vector, exclude = embedding_matrix(frame.iloc[[row]]), np.array([row])
    elif Path(query).exists():
        loaded = None
        if model is not None:
            from ctfm.hub import load

            loaded = load(model)
        vector, exclude = embed_like_table(query, settings, loaded)[None], None
    else:
        raise CTFMError(f"{query}: neither a row of {table} nor a scan on disk")
    index = table_index(table, kind, frame, settings)
    scores, rows = search_excluding(index, vector, k, exclude)
    found = rows[0] >= 0
    return pd.DataFrame(
        {
            "query": str(query),
            "rank": np.arange(1, found.sum() + 1),
            "path": [paths[r] for r in rows[0][found]],
            "similarity": scores[0][found].astype(float),
        }
    )
