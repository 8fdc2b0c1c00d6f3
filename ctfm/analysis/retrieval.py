"""Retrieval evaluation: how often the nearest scans of a query share its label, at k = 3, 5, 10.

For a query with label ``y`` and its top-``k`` retrieved items (most similar first, the query itself never among
them), let ``rel_i = 1`` when item ``i`` has label ``y``:

- precision ``P@k = (1/k) * sum_{i<=k} rel_i``;
- average precision ``AP@k = (1/R_k) * sum_{i<=k} rel_i * P@i``, with ``R_k = sum_{i<=k} rel_i`` the relevant items
  retrieved (``AP@k = 0`` when ``R_k = 0``): the mean of the precisions at the ranks where a relevant item appears;
- hit rate ``HR@k = 1`` when at least one of the ``k`` is relevant, else 0;
- ``F1@k``: the macro-averaged F1 score (scikit-learn) of labelling each query by the majority label of its ``k``
  neighbours (ties go to the label of the most similar tied neighbour). It is a score of the whole query set, so
  per query the table gives the predicted label instead.

Averages are the mean over queries (macro over classes for F1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ctfm.analysis.search import ExactIndex, search_excluding

DEFAULT_KS = (3, 5, 10)


def precision_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """``P@k`` per query from a ``(queries, >=k)`` 0/1 relevance matrix."""
    return relevant[:, :k].mean(axis=1)


def average_precision_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """``AP@k`` per query: mean precision at the ranks of the relevant items among the first ``k``."""
    hits = relevant[:, :k].astype(np.float64)
    precision_at_rank = np.cumsum(hits, axis=1) / np.arange(1, k + 1)
    found = hits.sum(axis=1)
    return np.divide((precision_at_rank * hits).sum(axis=1), found, out=np.zeros(len(hits)), where=found > 0)


def hit_rate_at_k(relevant: np.ndarray, k: int) -> np.ndarray:
    """``HR@k`` per query: 1 when any of the first ``k`` is relevant."""
    return relevant[:, :k].any(axis=1).astype(np.float64)


def majority_label(labels: Sequence) -> object:
    """Most frequent label of a ranked list; a tie goes to the tied label ranked first."""
    counts = Counter(labels)
    best = max(counts.values())
    return next(label for label in labels if counts[label] == best)


def f1_at_k(query_labels: np.ndarray, retrieved_labels: np.ndarray, k: int) -> tuple[float, list]:
    """Macro F1 of the majority-vote labels of the first ``k`` neighbours, and those labels."""
    from sklearn.metrics import f1_score

    predicted = [majority_label(list(row[:k])) for row in retrieved_labels]
    return float(f1_score(list(query_labels), predicted, average="macro")), predicted


def retrieval_metrics(
    query_labels: ArrayLike, retrieved_labels: ArrayLike, ks: Sequence[int] = DEFAULT_KS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-query metrics (``P@k``, ``AP@k``, ``HR@k``, ``label@k`` for each k) and a summary (one row per k)."""
    queried = np.asarray(query_labels)
    retrieved = np.asarray(retrieved_labels)
    if retrieved.shape[1] < max(ks):
        raise ValueError(f"need at least {max(ks)} neighbours per query, got {retrieved.shape[1]}")
    relevant = retrieved == queried[:, None]
    per_query = pd.DataFrame({"label": queried})
    summary = []
    for k in ks:
        per_query[f"P@{k}"] = precision_at_k(relevant, k)
        per_query[f"AP@{k}"] = average_precision_at_k(relevant, k)
        per_query[f"HR@{k}"] = hit_rate_at_k(relevant, k)
        f1, predicted = f1_at_k(queried, retrieved, k)
        per_query[f"label@{k}"] = predicted
        summary.append(
            {
                "k": k,
                "P": per_query[f"P@{k}"].mean(),
                "AP": per_query[f"AP@{k}"].mean(),
                "HR": per_query[f"HR@{k}"].mean(),
                "F1": f1,
            }
        )
    return per_query, pd.DataFrame(summary)


def evaluate_retrieval(
    database: np.ndarray,
    database_labels: ArrayLike,
    queries: np.ndarray | None = None,
    query_labels: ArrayLike | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Exact cosine retrieval of each query in the database, scored by :func:`retrieval_metrics`.

    Without ``queries`` every database row queries the others (leave one out: a query never retrieves itself).
    Returns the per-query table, the summary and the ``(queries, max k)`` retrieved database rows.
    """
    labels = np.asarray(database_labels)
    exclude = None
    if queries is None:
        queries, query_labels = database, labels
        exclude = np.arange(len(database))
    elif query_labels is None:
        raise ValueError("queries need their query_labels")
    _, rows = search_excluding(ExactIndex(database), queries, max(ks), exclude)
    per_query, summary = retrieval_metrics(query_labels, labels[rows], ks)
    return per_query, summary, rows
