"""The CT-FM retrieval protocol on a labelled set: database = train split, queries = val + test, cosine top-k.

Each volume is embedded on a grid of patches and reduced to one vector (mean, or min as 3D-MIR found best); the
results are a summary table (one row per k), a per-query table and a figure of queries with their neighbours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ctfm.analysis.retrieval import DEFAULT_KS, evaluate_retrieval
from ctfm.atomic import write_atomically
from ctfm.embedding import Reduction, embed


@dataclass
class RetrievalResult:
    summary: pd.DataFrame
    per_query: pd.DataFrame
    metrics_csv: Path
    per_query_csv: Path
    figure: Path


def embed_volumes(
    model: nn.Module, volumes: np.ndarray, patch_size: Sequence[int], reduce: Reduction, batch_size: int = 8
) -> np.ndarray:
    """One vector per preprocessed ``(z, y, x)`` volume in [0, 1]."""
    return np.stack(
        [
            embed(model, torch.from_numpy(v), patch_size=patch_size, reduce=reduce, batch_size=batch_size).numpy()
            for v in tqdm(volumes, desc="embedding volumes", unit="volume")
        ]
    )


def run_retrieval_eval(
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    model: nn.Module,
    out: str | Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    reduce: Reduction = "mean",
    patch_size: Sequence[int] | None = None,
    figure_queries: int = 6,
) -> RetrievalResult:
    """Embed the splits, retrieve the queries among the train split, write ``metrics.csv``, ``per_query.csv`` and
    ``neighbours.png`` into ``out``. ``patch_size`` defaults to the volume size (one patch per volume)."""
    from ctfm.plotting import retrieval_grid

    out = Path(out)
    train_images, train_labels = splits["train"]
    query_images = np.concatenate([splits[s][0] for s in ("val", "test") if s in splits])
    query_labels = np.concatenate([splits[s][1] for s in ("val", "test") if s in splits])
    patch = tuple(patch_size or train_images.shape[1:])
    database = embed_volumes(model, train_images, patch, reduce)
    queries = embed_volumes(model, query_images, patch, reduce)
    per_query, summary, rows = evaluate_retrieval(database, train_labels, queries, query_labels, ks)
    metrics_csv = write_atomically(out / "metrics.csv", lambda tmp: summary.to_csv(tmp, index=False))
    per_query_csv = write_atomically(out / "per_query.csv", lambda tmp: per_query.to_csv(tmp, index=False))
    shown = np.linspace(0, len(query_images) - 1, min(figure_queries, len(query_images))).astype(int)
    k = min(ks)
    figure = retrieval_grid(
        [query_images[i] for i in shown],
        [[train_images[j] for j in rows[i, :k]] for i in shown],
        [query_labels[i] for i in shown],
        [[train_labels[j] for j in rows[i, :k]] for i in shown],
        out / "neighbours.png",
    )
    return RetrievalResult(summary, per_query, metrics_csv, per_query_csv, figure)
