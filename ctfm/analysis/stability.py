"""Embedding stability: cosine similarity of corresponding patches of two scans of the same subject.

Corresponding means the same anatomy: patch centres of the first scan mapped into the second by a known world
transform (identity for a test-retest pair already registered; a rigid transform when the second scan was made
from the first). A stable encoder gives similarities near 1 whatever the noise or the grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from torch import nn

from ctfm.analysis.semantic_search import embed_points
from ctfm.embedding import embed_patches


def corresponding_patch_similarity(
    model: nn.Module,
    first: MetaTensor,
    second: MetaTensor,
    *,
    world_transform: np.ndarray | None = None,
    patch_size: Sequence[int] = (24, 64, 64),
    overlap: float = 0.0,
) -> np.ndarray:
    """Cosine similarity per patch of ``first`` (preprocessed) to the patch of ``second`` at the mapped centre.

    ``world_transform`` (4 x 4, RAS mm) takes a point of ``first`` to the same anatomy in ``second``. Pairs where
    either embedding is zero (all-air patches embed to zero: there is nothing to compare) are left out.
    """
    transform = np.eye(4) if world_transform is None else np.asarray(world_transform, dtype=np.float64)
    patches = embed_patches(model, first, patch_size=patch_size, overlap=overlap, preprocess=None)
    centres = np.c_[patches.centers_mm.numpy(), np.ones(len(patches.embeddings))] @ transform.T
    other = embed_points(model, second, centres[:, :3], patch_size)
    present = (patches.embeddings.norm(dim=1) > 1e-8) & (other.norm(dim=1) > 1e-8)
    return torch.nn.functional.cosine_similarity(patches.embeddings[present], other[present], dim=1).numpy()


def summary(similarities: np.ndarray) -> dict[str, float]:
    """Mean, median, 5th percentile and minimum of the similarities."""
    s = np.asarray(similarities, dtype=np.float64)
    return {"patches": float(len(s)), "mean": s.mean(), "median": float(np.median(s)), "p5": float(np.percentile(s, 5)),
            "min": s.min()}  # fmt: skip
