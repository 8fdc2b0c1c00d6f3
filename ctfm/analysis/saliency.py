"""Occlusion saliency of an embedding: which voxels of a patch does its embedding depend on?

Each occluding box of the patch is replaced by air (0 after preprocessing) and the patch re-embedded; the saliency of
the box's voxels is ``1 - cosine(embedding, occluded embedding)``, averaged where boxes overlap. The occluded
copies are embedded a batch at a time (MONAI's ``OcclusionSensitivity`` scores class logits, not embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ctfm.embedding import patch_starts
from ctfm.nn.encoder import pooled_features


@torch.inference_mode()
def occlusion_saliency(
    model: nn.Module,
    patch: torch.Tensor,
    *,
    window: Sequence[int] = (8, 8, 8),
    overlap: float = 0.0,
    batch_size: int = 8,
    fill: float = 0.0,
) -> np.ndarray:
    """Saliency ``(z, y, x)`` of a preprocessed ``(z, y, x)`` patch; 0 where occlusion leaves the embedding alone."""
    patch = torch.as_tensor(patch, dtype=torch.float32)
    if patch.ndim != 3:
        raise ValueError(f"expected a (z, y, x) patch, got shape {tuple(patch.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        reference = pooled_features(model, patch[None, None].to(device)).float()
        starts = patch_starts(patch.shape, window, overlap)
        total = torch.zeros(patch.shape, dtype=torch.float64)
        count = torch.zeros(patch.shape, dtype=torch.float64)
        for first in range(0, len(starts), batch_size):
            chunk = starts[first : first + batch_size]
            batch = patch[None].repeat(len(chunk), 1, 1, 1)
            regions = [np.s_[z : z + window[0], y : y + window[1], x : x + window[2]] for z, y, x in chunk]
            for index, region in enumerate(regions):
                batch[index][region] = fill
            occluded = pooled_features(model, batch[:, None].to(device)).float()
            deviation = (1 - torch.nn.functional.cosine_similarity(occluded, reference, dim=1)).cpu().double()
            for region, value in zip(regions, deviation):
                total[region] += value
                count[region] += 1
    finally:
        model.train(was_training)
    return (total / count.clamp(min=1)).numpy().astype(np.float32)
