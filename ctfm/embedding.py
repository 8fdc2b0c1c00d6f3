"""Embed a CT scan with a CT-FM encoder: one 512-d vector per scan, or one per patch with its position.

The scan is tiled with pretraining-sized patches (the encoder saw 24x128x128 at 3x1x1 mm), embedded a batch at a
time so memory stays bounded whatever the scan size, and the patch embeddings are reduced to one vector.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import dense_patch_slices
from torch import nn
from tqdm.auto import tqdm

from ctfm.nn.encoder import pooled_features
from ctfm.transforms.preprocess import PATCH_SIZE, CTPreprocessing, as_model_input

Reduction = Literal["mean", "min", "max"]
ImageInput = str | Path | MetaTensor | np.ndarray | torch.Tensor


@dataclass
class PatchEmbeddings:
    """Per-patch embeddings of one scan and where each patch sits.

    ``centers_voxel`` are (z, y, x) indices in the preprocessed volume; ``centers_mm`` are the same points in the
    scan's world coordinates (RAS millimetres, MONAI's convention), so results map back onto the original scan.
    """

    embeddings: torch.Tensor
    centers_voxel: torch.Tensor
    centers_mm: torch.Tensor
    patch_size: tuple[int, ...]

    def reduce(self, how: Reduction = "mean") -> torch.Tensor:
        if how == "mean":
            return self.embeddings.mean(dim=0)
        if how == "min":
            return self.embeddings.min(dim=0).values
        if how == "max":
            return self.embeddings.max(dim=0).values
        raise ValueError(f"reduce must be 'mean', 'min', 'max' or None, got {how!r}")


def patch_starts(spatial_shape: Sequence[int], patch_size: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """Corners of a grid of patches covering the volume; the last patch on each axis is shifted inside it."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    interval = tuple(max(1, int(round(p * (1.0 - overlap)))) for p in patch_size)
    return [tuple(s.start for s in slices) for slices in dense_patch_slices(spatial_shape, patch_size, interval)]


def to_model_input(image: ImageInput, preprocess: CTPreprocessing | None, patch_size: Sequence[int]) -> MetaTensor:
    """Paths and HU MetaTensors go through ``preprocess``; plain arrays are taken as preprocessed (z, y, x) input."""
    if isinstance(image, (str, Path)) or (isinstance(image, MetaTensor) and preprocess is not None):
        if preprocess is None:
            raise ValueError("a path needs preprocessing; pass preprocess=CTPreprocessing(...)")
        if tuple(preprocess.min_size) != tuple(patch_size):
            preprocess = replace(preprocess, min_size=tuple(patch_size))
        return preprocess(image)
    return as_model_input(image, patch_size)


def _batches(
    volume: torch.Tensor, starts: list[tuple[int, ...]], size: Sequence[int], n: int
) -> Iterator[torch.Tensor]:
    for first in range(0, len(starts), n):
        yield torch.stack(
            [volume[:, z : z + size[0], y : y + size[1], x : x + size[2]] for z, y, x in starts[first : first + n]]
        )


@torch.inference_mode()
def embed_patches(
    model: nn.Module,
    image: ImageInput,
    *,
    patch_size: Sequence[int] = PATCH_SIZE,
    overlap: float = 0.0,
    batch_size: int = 4,
    preprocess: CTPreprocessing | None = CTPreprocessing(),
    progress: bool | None = None,
) -> PatchEmbeddings:
    """Embed every patch of a grid over the scan. See :func:`embed` for the arguments."""
    patch_size = tuple(int(p) for p in patch_size)
    volume = to_model_input(image, preprocess, patch_size)
    affine = volume.affine.double() if isinstance(volume, MetaTensor) else torch.eye(4, dtype=torch.float64)
    device = next(model.parameters()).device
    starts = patch_starts(volume.shape[1:], patch_size, overlap)
    plain = volume.as_tensor() if isinstance(volume, MetaTensor) else volume
    batches = _batches(plain, starts, patch_size, batch_size)
    n_batches = -(-len(starts) // batch_size)
    show = n_batches > 8 if progress is None else progress
    was_training = model.training
    model.eval()
    try:
        embeddings = [
            pooled_features(model, batch.to(device)).float().cpu()
            for batch in tqdm(batches, total=n_batches, desc="embedding patches", unit="batch", disable=not show)
        ]
    finally:
        model.train(was_training)
    centers = torch.tensor(starts, dtype=torch.float64) + (torch.tensor(patch_size, dtype=torch.float64) - 1) / 2
    homogeneous = torch.cat([centers, torch.ones(len(starts), 1, dtype=torch.float64)], dim=1)
    centers_mm = (homogeneous @ affine.T)[:, :3]
    return PatchEmbeddings(torch.cat(embeddings), centers, centers_mm, patch_size)


def embed(
    model: nn.Module,
    image: ImageInput,
    *,
    patch_size: Sequence[int] = PATCH_SIZE,
    overlap: float = 0.0,
    reduce: Reduction | None = "mean",
    batch_size: int = 4,
    preprocess: CTPreprocessing | None = CTPreprocessing(),
    progress: bool | None = None,
) -> torch.Tensor | PatchEmbeddings:
    """Embed one CT scan with a CT-FM encoder (or a SegResNetDS carrying one).

    Args:
        model: the encoder, e.g. ``ctfm.load("ct-fm")``; it runs on its own device, in eval mode.
        image: a path (NIfTI, NRRD, MHA, DICOM folder) or a MetaTensor in HU, both preprocessed with
            ``preprocess``; or a plain array/tensor ``(z, y, x)`` already preprocessed to [0, 1] (only padded).
        patch_size: (z, y, x) patch in voxels; the pretraining patch by default.
        overlap: fraction of a patch shared by neighbours (0 computes every voxel once).
        reduce: ``"mean"`` / ``"min"`` / ``"max"`` over patches gives one vector per scan; ``None`` returns
            :class:`PatchEmbeddings` with every patch's embedding and centre.
        batch_size: patches per forward pass; bounds memory.
        preprocess: the canonical preprocessing by default; ``None`` when the MetaTensor is model input already.
        progress: show a progress bar (default: only for scans of more than 8 batches).

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.nn import ct_fm_encoder
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> model = ct_fm_encoder(init_filters=4)  # or ctfm.load("ct-fm")
        >>> ctfm.embed(model, scan, patch_size=(8, 32, 32)).shape
        torch.Size([64])
        >>> patches = ctfm.embed(model, scan, patch_size=(8, 32, 32), reduce=None)
        >>> patches.embeddings.shape[1], patches.centers_mm.shape[1]
        (64, 3)
    """
    patches = embed_patches(
        model,
        image,
        patch_size=patch_size,
        overlap=overlap,
        batch_size=batch_size,
        preprocess=preprocess,
        progress=progress,
    )
    return patches if reduce is None else patches.reduce(reduce)
