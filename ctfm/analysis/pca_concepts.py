"""PCA concept maps: dense patch embeddings of two scans in one 3-component PCA, shown as colours.

Both scans' patches are projected on principal components fitted on the two together, so a colour means the same
direction of embedding space in both pictures: the same anatomy should get the same colour. Every body voxel (above
the preprocessing's body threshold, lungs included) takes the colour of the window whose centre is nearest, so the
whole body is painted at any overlap; the air around it is left uncoloured. The three components (the first
oriented so that air scores low) become CIELAB lightness and the two colour axes, converted to RGB.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import MetaTensor
from sklearn.decomposition import PCA
from torch import nn

from ctfm.analysis.tiles import nearest_tile
from ctfm.embedding import PatchEmbeddings, embed_patches
from ctfm.transforms.preprocess import CTPreprocessing


@dataclass
class ConceptMap:
    """Per-voxel RGB (``(z, y, x, 3)``, NaN where background) of a preprocessed volume."""

    volume: np.ndarray
    rgb: np.ndarray


def lab_colours(components: np.ndarray) -> np.ndarray:
    """Rows of 3 components -> RGB in [0, 1]: lightness 35-90 from the first, a* and b* (+-60) from the others."""
    from skimage.color import lab2rgb

    low, high = components.min(axis=0), components.max(axis=0)
    unit = (components - low) / np.where(high > low, high - low, 1.0)
    lab = np.stack([35 + 55 * unit[:, 0], 120 * unit[:, 1] - 60, 120 * unit[:, 2] - 60], axis=1)
    return lab2rgb(lab[None])[0]


def _paint(patches: PatchEmbeddings, colours: np.ndarray, volume: np.ndarray, body_threshold: float) -> np.ndarray:
    """``(z, y, x, 3)`` RGB: each body voxel the colour of its nearest window, NaN in the air around the body. The
    body is what lies above ``body_threshold`` with the holes of each axial slice filled, so the lungs count."""
    from scipy.ndimage import binary_fill_holes

    body = np.stack([binary_fill_holes(plane) for plane in volume > body_threshold])
    rgb = nearest_tile(patches, colours, volume.shape).astype(np.float64)
    rgb[~body] = np.nan
    return rgb


def pca_concepts(
    model: nn.Module,
    volumes: Sequence[MetaTensor | torch.Tensor],
    *,
    patch_size: Sequence[int] = (24, 64, 64),
    overlap: float = 0.75,
    batch_size: int = 8,
    body_threshold: float = CTPreprocessing().body_threshold,
) -> list[ConceptMap]:
    """Concept maps of preprocessed ``(1, z, y, x)`` volumes from one PCA fitted on all their patches; voxels at or
    below ``body_threshold`` (the preprocessed scale) stay uncoloured."""
    patches = [
        embed_patches(model, v, patch_size=patch_size, overlap=overlap, batch_size=batch_size, preprocess=None)
        for v in volumes
    ]
    embeddings = torch.cat([p.embeddings for p in patches]).numpy()
    components = PCA(n_components=3, random_state=0).fit_transform(embeddings)
    intensity = np.concatenate([_centre_intensity(v, p) for v, p in zip(volumes, patches)])
    if np.corrcoef(components[:, 0], intensity)[0, 1] < 0:
        components[:, 0] *= -1  # orient PC1 so air is low
    colours = lab_colours(components)
    maps, first = [], 0
    for volume, p in zip(volumes, patches):
        n = len(p.embeddings)
        array = np.asarray(torch.as_tensor(volume).reshape(volume.shape[-3:]))
        maps.append(ConceptMap(array, _paint(p, colours[first : first + n], array, body_threshold)))
        first += n
    return maps


def _centre_intensity(volume: torch.Tensor, patches: PatchEmbeddings) -> np.ndarray:
    array = torch.as_tensor(volume).reshape(volume.shape[-3:])
    centres = np.round(patches.centers_voxel.numpy()).astype(int)
    return np.array([float(array[tuple(c)]) for c in centres])
