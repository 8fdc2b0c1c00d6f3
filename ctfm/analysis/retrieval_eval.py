"""The CT-FM retrieval protocol on a labelled set: database = train split, queries = val + test, cosine top-k.

Each volume is embedded on a grid of patches and reduced to one vector (mean, or min as 3D-MIR found best); the
results are a summary table (one row per k), a per-query table and a figure of queries with their neighbours.
Volumes come as arrays (OrganMNIST3D's crops, :func:`run_retrieval_eval`) or as scan files (3D-MIR's MSD images,
:func:`run_scan_retrieval_eval`: each scan preprocessed and embedded like ``ctfm embed``; unreadable scans are
skipped and reported).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ctfm.analysis.retrieval import DEFAULT_KS, evaluate_retrieval
from ctfm.atomic import write_atomically
from ctfm.embedding import Reduction, embed_patches
from ctfm.errors import InvalidScanError
from ctfm.io.reader import read_ct
from ctfm.transforms.preprocess import PATCH_SIZE, CTPreprocessing


@dataclass
class RetrievalResult:
    summary: pd.DataFrame
    per_query: pd.DataFrame
    metrics_csv: Path
    per_query_csv: Path
    figure: Path
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (scan, problem) left out


def embed_volumes(
    model: nn.Module, volumes: np.ndarray, patch_size: Sequence[int], reduce: Reduction, batch_size: int = 8
) -> np.ndarray:
    """One vector per preprocessed ``(z, y, x)`` volume in [0, 1]."""
    vectors = []
    for volume in tqdm(volumes, desc="embedding volumes", unit="volume"):
        patches = embed_patches(model, torch.from_numpy(volume), patch_size=patch_size, batch_size=batch_size)
        vectors.append(patches.reduce(reduce).numpy())
    return np.stack(vectors)


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
    ``neighbours.png`` into ``out``.

    Args:
        splits: ``{"train" | "val" | "test": (volumes, labels)}`` with preprocessed ``(N, z, y, x)`` volumes in
            [0, 1] (e.g. MedMNIST 3D); the train split is the database, val and test the queries.
        model: the encoder.
        out: the output folder.
        ks: the k of precision, average precision, hit rate and F1 at k.
        reduce: how patch embeddings become one vector per volume.
        patch_size: the patch in voxels; default the volume size (one patch per volume).
        figure_queries: queries shown with their neighbours in ``neighbours.png``.

    Returns:
        The summary and per-query tables and the paths written.
    """
    train_images, train_labels = splits["train"]
    query_images = np.concatenate([splits[s][0] for s in ("val", "test") if s in splits])
    query_labels = np.concatenate([splits[s][1] for s in ("val", "test") if s in splits])
    patch = tuple(patch_size or train_images.shape[1:])
    database = embed_volumes(model, train_images, patch, reduce)
    queries = embed_volumes(model, query_images, patch, reduce)
    return write_retrieval(
        Path(out), database, train_labels, list(train_images), queries, query_labels, list(query_images), ks,
        figure_queries,
    )  # fmt: skip


def embed_scans(
    model: nn.Module,
    paths: Sequence[Path],
    preprocess: CTPreprocessing,
    patch_size: Sequence[int],
    overlap: float,
    reduce: Reduction,
    skipped: list[tuple[str, str]],
) -> tuple[list[int], np.ndarray, list[np.ndarray]]:
    """Indices of the scans embedded, their reduced embeddings and a thumbnail (the middle axial slice) of each."""
    kept, vectors, thumbnails = [], [], []
    for index, path in enumerate(tqdm(paths, desc="embedding scans", unit="scan")):
        try:
            volume = preprocess(read_ct(path, check_hu=preprocess.check_hu))
        except InvalidScanError as err:
            skipped.append((str(path), err.problem))
            continue
        patches = embed_patches(model, volume, patch_size=patch_size, overlap=overlap, preprocess=None, progress=False)
        kept.append(index)
        vectors.append(patches.reduce(reduce).numpy())
        thumbnails.append(np.asarray(volume[0, volume.shape[1] // 2])[None])
    return kept, np.stack(vectors) if vectors else np.zeros((0, 0), np.float32), thumbnails


def run_scan_retrieval_eval(
    splits: dict[str, tuple[list[Path], np.ndarray]],
    model: nn.Module,
    out: str | Path,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    reduce: Reduction = "min",
    patch_size: Sequence[int] = PATCH_SIZE,
    overlap: float = 0.0,
    preprocess: CTPreprocessing = CTPreprocessing(),
    figure_queries: int = 6,
) -> RetrievalResult:
    """The protocol on scan files (3D-MIR's split CSVs, :func:`ctfm.data.mir3d.read_3dmir`): each scan is
    preprocessed, embedded on a ``patch_size`` grid and reduced (``min`` by default, 3D-MIR's best); scans that
    cannot be read are skipped and listed in ``skipped``. Writes what :func:`run_retrieval_eval` writes.

    Args:
        splits: ``{"train" | "val" | "test": (scan paths, labels)}``; train is the database.
        model: the encoder.
        out: the output folder.
        ks: the k of precision, average precision, hit rate and F1 at k.
        reduce: how patch embeddings become one vector per scan.
        patch_size: the patch (z, y, x) in voxels of the preprocessed scan.
        overlap: fraction of a patch shared by its neighbours.
        preprocess: the preprocessing of the scans.
        figure_queries: queries shown with their neighbours in ``neighbours.png``.

    Returns:
        The summary and per-query tables, the paths written and the scans skipped.
    """
    from ctfm.errors import CTFMError

    preprocess = replace(preprocess, min_size=tuple(patch_size))
    skipped: list[tuple[str, str]] = []
    embedded = {}
    for split, (paths, labels) in splits.items():
        kept, vectors, thumbnails = embed_scans(model, paths, preprocess, patch_size, overlap, reduce, skipped)
        embedded[split] = (vectors, np.asarray(labels)[kept], thumbnails)
    database, train_labels, train_thumbs = embedded["train"]
    query_splits = [embedded[s] for s in ("val", "test") if s in embedded and len(embedded[s][0])]
    if len(database) < max(ks) or not query_splits:
        raise CTFMError(
            f"after skipping {len(skipped)} unreadable scans: {len(database)} train scans (need {max(ks)}) and "
            f"{sum(len(q[0]) for q in query_splits)} queries"
        )
    queries = np.concatenate([q[0] for q in query_splits])
    query_labels = np.concatenate([q[1] for q in query_splits])
    query_thumbs = [t for q in query_splits for t in q[2]]
    result = write_retrieval(
        Path(out), database, train_labels, train_thumbs, queries, query_labels, query_thumbs, ks, figure_queries
    )
    result.skipped = skipped
    return result


def write_retrieval(
    out: Path,
    database: np.ndarray,
    train_labels: np.ndarray,
    train_images: list[np.ndarray],
    queries: np.ndarray,
    query_labels: np.ndarray,
    query_images: list[np.ndarray],
    ks: Sequence[int],
    figure_queries: int,
) -> RetrievalResult:
    """Score the queries against the database; write the two tables and the figure of neighbours."""
    from ctfm.plotting import retrieval_grid

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
