"""Dense sliding windows over a scan: embed every window once, spread per-window values over the voxels each window
covers, and resample the result onto the scan's own grid.

Semantic search (one query, one heat map) and similarity maps (one channel per prototype) both work this way; the
windows live on the preprocessed grid (SPL, resampled, cropped), the outputs on the grid the scan was read on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from scipy.ndimage import map_coordinates
from torch import nn

from ctfm.analysis.query_vectors import query_settings
from ctfm.atomic import write_atomically
from ctfm.embedding import PatchEmbeddings, embed_patches
from ctfm.embedding_table import model_fingerprint
from ctfm.transforms.preprocess import CTPreprocessing

Aggregation = Literal["mean", "max"]


def world_to_voxel(affine: np.ndarray, points_mm: np.ndarray) -> np.ndarray:
    """Continuous voxel indices of world points under a voxel -> world ``affine``."""
    points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
    return (np.c_[points, np.ones(len(points))] @ np.linalg.inv(np.asarray(affine, dtype=np.float64)).T)[:, :3]


def voxel_to_world(affine: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    voxels = np.atleast_2d(np.asarray(voxels, dtype=np.float64))
    return (np.c_[voxels, np.ones(len(voxels))] @ np.asarray(affine, dtype=np.float64).T)[:, :3]


class TargetCache:
    """Patch embeddings of target scans, reused across queries: in memory, and on disk when ``folder`` is given."""

    def __init__(self, model: nn.Module, preprocess: CTPreprocessing, patch_size: Sequence[int], overlap: float,
                 folder: str | Path | None = None, batch_size: int = 4):  # fmt: skip
        self.model, self.overlap, self.batch_size = model, overlap, batch_size
        self.patch_size = tuple(int(p) for p in patch_size)
        self.preprocess = CTPreprocessing(**{**asdict(preprocess), "min_size": self.patch_size})
        self.folder = Path(folder) if folder else None
        self.model_sha256 = model_fingerprint(model)
        self.settings = {
            "model": self.model_sha256,
            "preprocessing": asdict(preprocess),
            "patch_size": self.patch_size,
            "overlap": overlap,
        }
        self.memory: dict[str, PatchEmbeddings] = {}
        self.embedded = 0  # targets actually run through the encoder

    def query_settings(self) -> dict:
        """What a query vector must have been made with to be compared with these windows."""
        return query_settings(self.model_sha256, self.patch_size, self.preprocess)

    def key(self, path: Path) -> str:
        stat = path.stat()
        what = {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns, **self.settings}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def get(self, path: str | Path, volume: MetaTensor) -> PatchEmbeddings:
        """The target's patch embeddings; ``volume`` is its preprocessed form (embedded on a miss)."""
        key = self.key(Path(path))
        if key in self.memory:
            return self.memory[key]
        disk = self.folder / f"{key}.npz" if self.folder else None
        if disk is not None and disk.exists():
            with np.load(disk) as stored:
                patches = PatchEmbeddings(*(torch.from_numpy(stored[n]) for n in ("e", "v", "m")), self.patch_size)
        else:
            patches = embed_patches(
                self.model, volume, patch_size=self.patch_size, overlap=self.overlap, batch_size=self.batch_size,
                preprocess=None, progress=None,
            )  # fmt: skip
            self.embedded += 1
            if disk is not None:
                arrays = {"e": patches.embeddings, "v": patches.centers_voxel, "m": patches.centers_mm}
                write_atomically(disk, lambda tmp: np.savez(tmp, **{k: v.numpy() for k, v in arrays.items()}))
        self.memory[key] = patches
        return patches


def aggregate_windows(
    patches: PatchEmbeddings, values: np.ndarray, shape: Sequence[int], how: Aggregation = "mean"
) -> np.ndarray:
    """Per-voxel mean (or max) of the values of the windows covering each voxel of the preprocessed volume.

    ``values`` is ``(windows,)`` or ``(windows, channels)``; the result ``shape`` or ``(channels, *shape)``. A voxel
    no window covers (none, with the tiling :func:`ctfm.embedding.patch_starts` makes) gets each channel's minimum.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregation must be 'mean' or 'max', got {how!r}")
    values = np.asarray(values, dtype=np.float64)
    flat = values[:, None] if values.ndim == 1 else values
    channels = flat.shape[1]
    total = np.full((channels, *shape), 0.0 if how == "mean" else -np.inf)
    count = np.zeros(tuple(shape), dtype=np.float64)
    size = np.array(patches.patch_size)
    starts = np.round(patches.centers_voxel.numpy() - (size - 1) / 2).astype(int)
    for (z, y, x), value in zip(starts, flat):
        region = np.s_[z : z + size[0], y : y + size[1], x : x + size[2]]
        if how == "mean":
            total[(slice(None), *region)] += value[:, None, None, None]
        else:
            np.maximum(total[(slice(None), *region)], value[:, None, None, None], out=total[(slice(None), *region)])
        count[region] += 1
    covered = count > 0
    out = np.broadcast_to(flat.min(axis=0)[:, None, None, None], total.shape).astype(np.float32)
    out[:, covered] = total[:, covered] / count[covered] if how == "mean" else total[:, covered]
    return out[0] if values.ndim == 1 else out


def resample_to_grid(
    values: np.ndarray, values_affine: np.ndarray, grid: MetaTensor, fill: float | None = None
) -> np.ndarray:
    """``values`` (on ``values_affine``; optionally a leading channel axis) sampled trilinearly at every voxel of
    ``grid``, a slab at a time. Voxels of ``grid`` outside ``values`` take the nearest edge value, or ``fill``."""
    shape = grid.shape[1:]
    channels = values[None] if values.ndim == 3 else values
    mapping = np.linalg.inv(np.asarray(values_affine, dtype=np.float64)) @ np.asarray(grid.affine, dtype=np.float64)
    out = np.empty((len(channels), *shape), dtype=np.float32)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    mode, cval = ("nearest", 0.0) if fill is None else ("constant", float(fill))
    for i in range(shape[0]):
        index = np.stack([np.full(j.shape, i), j, k, np.ones(j.shape)]).reshape(4, -1)
        where = (mapping @ index)[:3]
        for channel, array in enumerate(channels):
            out[channel, i] = map_coordinates(array, where, order=1, mode=mode, cval=cval).reshape(j.shape)
    return out[0] if values.ndim == 3 else out
