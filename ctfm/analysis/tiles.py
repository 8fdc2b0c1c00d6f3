"""Dense overlapping tiles of a scan: embed every tile once, spread per-tile values over the voxels each tile
covers, and resample the result onto the scan's own grid.

Semantic search (one query, one heat map) and similarity maps (one channel per prototype) both work this way; the
tiles live on the preprocessed grid (SPL, resampled, cropped), the outputs on the grid the scan was read on.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.data import MetaTensor
from numpy.typing import ArrayLike
from scipy.ndimage import map_coordinates
from torch import nn

from ctfm.analysis.query_vectors import query_settings
from ctfm.atomic import write_atomically
from ctfm.data.cache import check_body, check_geometry
from ctfm.embedding import PatchEmbeddings, embed_patches
from ctfm.embedding_table import model_fingerprint
from ctfm.errors import InvalidScanError
from ctfm.io.reader import read_ct
from ctfm.transforms.preprocess import CTPreprocessing

Aggregation = Literal["mean", "max"]


def world_to_voxel(affine: ArrayLike, points_mm: ArrayLike) -> np.ndarray:
    """Continuous voxel indices of world points under a voxel -> world ``affine``."""
    points = np.atleast_2d(np.asarray(points_mm, dtype=np.float64))
    return (np.c_[points, np.ones(len(points))] @ np.linalg.inv(np.asarray(affine, dtype=np.float64)).T)[:, :3]


def voxel_to_world(affine: ArrayLike, voxels: ArrayLike) -> np.ndarray:
    points = np.atleast_2d(np.asarray(voxels, dtype=np.float64))
    return (np.c_[points, np.ones(len(points))] @ np.asarray(affine, dtype=np.float64).T)[:, :3]


#: Default budget of :attr:`TargetCache.volumes`: five clinical 200 x 512 x 512 targets, read and preprocessed.
VOLUME_CACHE_BYTES = 4 * 2**30


class TargetCache:
    """Target scans as read and preprocessed, and their patch embeddings, reused across queries.

    Embeddings stay in memory (and on disk when ``folder`` is given). The volumes, a few hundred MB each at clinical
    size, are kept up to ``max_volume_bytes`` and the least recently used go first: reading and preprocessing a
    target costs about as much as embedding it, so ten queries would otherwise pay for it ten times.

    Args:
        model: the encoder.
        preprocess: the preprocessing of the targets (its ``min_size`` becomes ``patch_size``).
        patch_size: the sliding window (z, y, x) in voxels of the preprocessed scan.
        overlap: fraction of a window shared by its neighbours.
        folder: where embeddings are also kept on disk, keyed by file, size, modification time and settings.
        batch_size: windows per forward pass.
        max_volume_bytes: memory for read and preprocessed volumes.
        model_name: the registry name or path the model came from, recorded in saved queries.
    """

    def __init__(self, model: nn.Module, preprocess: CTPreprocessing, patch_size: Sequence[int], overlap: float,
                 folder: str | Path | None = None, batch_size: int = 4,
                 max_volume_bytes: int = VOLUME_CACHE_BYTES, model_name: str = ""):  # fmt: skip
        self.model, self.overlap, self.batch_size = model, overlap, batch_size
        self.model_name = model_name  # the registry name or path the model came from, recorded in saved queries
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
        self.volumes: OrderedDict[str, tuple[MetaTensor, MetaTensor]] = OrderedDict()
        self.max_volume_bytes = max_volume_bytes
        self.embedded = 0  # targets actually run through the encoder
        self.read = 0  # targets actually read and preprocessed

    def query_settings(self) -> dict:
        """What a query vector must have been made with to be compared with these tiles."""
        return query_settings(self.model_sha256, self.patch_size, self.preprocess, self.model_name)

    def key(self, path: Path) -> str:
        try:
            stat = path.stat()
        except OSError as err:
            raise InvalidScanError(path, f"cannot be read ({err.strerror or err})") from err
        what = {"path": str(path.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns, **self.settings}
        return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def load(self, path: str | Path) -> tuple[MetaTensor, MetaTensor]:
        """The target as read (HU, its own grid) and preprocessed, from memory when it was loaded before."""
        key = self.key(Path(path))
        if key in self.volumes:
            self.volumes.move_to_end(key)
            return self.volumes[key]
        scan = read_ct(path, check_hu=self.preprocess.check_hu)
        check_geometry(path, scan, self.preprocess)  # the checks of ctfm prepare and ctfm embed: no degenerate scan
        volume = self.preprocess(scan)
        check_body(path, volume.numpy(), self.preprocess)
        self.read += 1
        self.volumes[key] = (scan, volume)
        held = sum(a.element_size() * a.nelement() for pair in self.volumes.values() for a in pair)
        while held > self.max_volume_bytes and len(self.volumes) > 1:
            _, dropped = self.volumes.popitem(last=False)
            held -= sum(a.element_size() * a.nelement() for a in dropped)
        return scan, volume

    def get(self, path: str | Path, volume: MetaTensor) -> PatchEmbeddings:
        """The target's patch embeddings; ``volume`` is its preprocessed form (embedded on a miss)."""
        key = self.key(Path(path))
        if key in self.memory:
            return self.memory[key]
        disk = self.folder / f"{key}.npz" if self.folder else None
        if disk is not None and disk.exists():
            with np.load(disk, allow_pickle=False) as stored:
                embeddings, voxels, mm = (torch.from_numpy(stored[n]) for n in ("e", "v", "m"))
                patches = PatchEmbeddings(embeddings, voxels, mm, self.patch_size)
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


def aggregate_tiles(
    patches: PatchEmbeddings, values: np.ndarray, shape: Sequence[int], how: Aggregation = "mean"
) -> np.ndarray:
    """Per-voxel mean (or max) of the values of the tiles covering each voxel of the preprocessed volume.

    ``values`` is ``(tiles,)`` or ``(tiles, channels)``; the result ``shape`` or ``(channels, *shape)``. A voxel
    no tile covers (none, with the tiling :func:`ctfm.embedding.patch_starts` makes) gets each channel's minimum.
    Tiles tiled on a grid (every combination of the per-axis starts, as ``patch_starts`` gives) are spread one
    axis at a time (:func:`_spread_grid`); any other set of tiles one tile at a time.
    """
    if how not in ("mean", "max"):
        raise ValueError(f"aggregation must be 'mean' or 'max', got {how!r}")
    values = np.asarray(values, dtype=np.float64)
    flat = values[:, None] if values.ndim == 1 else values
    size = np.array(patches.patch_size)
    starts = np.round(patches.centers_voxel.numpy() - (size - 1) / 2).astype(int)
    spread = _spread_grid if _is_grid(starts) else _spread_each
    total, count = spread(starts, size, flat, tuple(shape), how)
    covered = count > 0
    out = np.broadcast_to(flat.min(axis=0)[:, None, None, None], total.shape).astype(np.float32)
    out[:, covered] = total[:, covered] / count[covered] if how == "mean" else total[:, covered]
    return out[0] if values.ndim == 1 else out


def nearest_tile(patches: PatchEmbeddings, values: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Each voxel of the preprocessed volume takes the value of the tile whose centre is nearest (ties: the
    lower one), so every voxel is painted, the best tile's value covers the voxels around its centre and nothing
    beyond that tile.

    ``values`` is ``(tiles,)`` or ``(tiles, channels)``; the result ``shape`` or ``(*shape, channels)``. Tiles
    on a grid (as :func:`ctfm.embedding.patch_starts` tiles them) are resolved one axis at a time; any other set of
    tiles through a k-d tree, a slice at a time.
    """
    values = np.asarray(values)
    centres = patches.centers_voxel.numpy().astype(np.float64)
    size = np.array(patches.patch_size)
    starts = np.round(centres - (size - 1) / 2).astype(int)
    if _is_grid(starts):
        corners = [np.unique(starts[:, axis]) for axis in range(3)]
        grid = np.empty((*(len(c) for c in corners), *values.shape[1:]), dtype=values.dtype)
        grid[tuple(np.searchsorted(corners[axis], starts[:, axis]) for axis in range(3))] = values
        nearest = []
        for axis in range(3):
            middles = corners[axis] + (size[axis] - 1) / 2
            boundaries = (middles[1:] + middles[:-1]) / 2
            nearest.append(np.searchsorted(boundaries, np.arange(shape[axis]), side="left"))
        return grid[np.ix_(*nearest)]
    from scipy.spatial import cKDTree

    tree = cKDTree(centres)
    out = np.empty((*shape, *values.shape[1:]), dtype=values.dtype)
    y, x = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    for z in range(shape[0]):
        _, index = tree.query(np.stack([np.full(y.size, z), y.ravel(), x.ravel()], axis=1))
        out[z] = values[index].reshape(*y.shape, *values.shape[1:])
    return out


def _is_grid(starts: np.ndarray) -> bool:
    """Whether the tile corners are every combination of their per-axis values, each once."""
    combinations = np.prod([len(np.unique(starts[:, axis])) for axis in range(3)])
    return len(starts) == combinations == len(np.unique(starts, axis=0))


def _spread_grid(starts: np.ndarray, size: np.ndarray, flat: np.ndarray, shape: tuple[int, ...], how: Aggregation):
    """(sum or max of covering tiles, count of covering tiles) for tiles on a grid: a voxel's covering tiles
    are the combinations of the covering tiles of each axis, so both reduce one axis at a time."""
    corners = [np.unique(starts[:, axis]) for axis in range(3)]
    index = tuple(np.searchsorted(corners[axis], starts[:, axis]) for axis in range(3))
    result = np.zeros((flat.shape[1], *(len(c) for c in corners)))
    result[(slice(None),) + index] = flat.T
    count = np.ones(())
    for axis in range(3):
        expanded_shape = list(result.shape)
        expanded_shape[1 + axis] = shape[axis]
        expanded = np.full(expanded_shape, 0.0 if how == "mean" else -np.inf)
        along = np.zeros(shape[axis])
        for k, corner in enumerate(corners[axis]):
            target = [slice(None)] * result.ndim
            target[1 + axis] = slice(corner, corner + size[axis])
            tile = np.take(result, [k], axis=1 + axis)
            if how == "mean":
                expanded[tuple(target)] += tile
            else:
                np.maximum(expanded[tuple(target)], tile, out=expanded[tuple(target)])
            along[corner : corner + size[axis]] += 1
        result = expanded
        count = np.multiply.outer(count, along)
    return result, count


def _spread_each(starts: np.ndarray, size: np.ndarray, flat: np.ndarray, shape: tuple[int, ...], how: Aggregation):
    total = np.full((flat.shape[1], *shape), 0.0 if how == "mean" else -np.inf)
    count = np.zeros(shape, dtype=np.float64)
    for (z, y, x), value in zip(starts, flat):
        region = np.s_[z : z + size[0], y : y + size[1], x : x + size[2]]
        channels = (slice(None),) + region
        if how == "mean":
            total[channels] += value[:, None, None, None]
        else:
            np.maximum(total[channels], value[:, None, None, None], out=total[channels])
        count[region] += 1
    return total, count


def resample_to_grid(
    values: np.ndarray, values_affine: ArrayLike, grid: MetaTensor, fill: float | None = None
) -> np.ndarray:
    """``values`` (on ``values_affine``; optionally a leading channel axis) sampled trilinearly at every voxel of
    ``grid``. Voxels of ``grid`` outside ``values`` take the nearest edge value, or ``fill``.

    Preprocessing only reorients, rescales and crops, so each axis of ``grid`` usually maps to one axis of
    ``values``: trilinear sampling is then three 1D interpolations, one axis at a time (:func:`_resample_separable`,
    linear in the output size). Any other mapping (an oblique grid) samples every voxel with SciPy's
    ``map_coordinates``, a slab at a time.
    """
    channels = values[None] if values.ndim == 3 else values
    mapping = np.linalg.inv(np.asarray(values_affine, dtype=np.float64)) @ np.asarray(grid.affine, dtype=np.float64)
    axes = _axis_pairs(mapping[:3, :3])
    if axes is not None:
        out = _resample_separable(channels, mapping, axes, tuple(grid.shape[1:]), fill)
    else:
        out = _resample_general(channels, mapping, tuple(grid.shape[1:]), fill)
    return out[0] if values.ndim == 3 else out


def _axis_pairs(linear: np.ndarray, tolerance: float = 1e-6) -> list[int] | None:
    """For each axis of ``values``, the one grid axis it depends on, when ``linear`` is a scaled signed permutation;
    else None."""
    scale = np.abs(linear).max()
    nonzero = np.abs(linear) > tolerance * scale
    if not (nonzero.sum(axis=1) == 1).all() or not (nonzero.sum(axis=0) == 1).all():
        return None
    return [int(np.flatnonzero(row)[0]) for row in nonzero]


def _resample_separable(
    channels: np.ndarray, mapping: np.ndarray, axes: list[int], shape: tuple[int, ...], fill: float | None
) -> np.ndarray:
    """Trilinear sampling as map_coordinates(order=1, mode "nearest" or "constant") would give it, axis by axis:
    values axis ``r`` is sampled at ``mapping[r, axes[r]] * i + mapping[r, 3]`` for every index ``i`` of grid axis
    ``axes[r]``.

    The (small) values are first transposed into grid axis order, so the (large) result never is; the axes that
    grow least are interpolated first, so the intermediate arrays stay small.
    """
    source_of = [axes.index(g) for g in range(3)]  # the values axis behind each grid axis
    result = torch.from_numpy(np.ascontiguousarray(channels.transpose(0, *(1 + r for r in source_of)), np.float32))
    growth = [shape[g] / channels.shape[1 + source_of[g]] for g in range(3)]
    for g in sorted(range(3), key=lambda g: growth[g]):
        r = source_of[g]
        n = channels.shape[1 + r]
        coords = mapping[r, g] * np.arange(shape[g]) + mapping[r, 3]
        coords = np.where(np.abs(coords - np.round(coords)) < 1e-6, np.round(coords), coords)  # float noise
        outside = (coords < 0) | (coords > n - 1)
        clamped = np.clip(coords, 0, n - 1)
        low = np.minimum(np.floor(clamped).astype(np.int64), max(n - 2, 0))
        high = np.minimum(low + 1, n - 1)
        view = [1] * result.ndim
        view[1 + g] = -1
        weight = torch.from_numpy((clamped - low).astype(np.float32)).reshape(view)
        # lerp is exact at weights 0 and 1, so grid voxels on values voxels get the values themselves
        result = torch.lerp(
            result.index_select(1 + g, torch.from_numpy(low)), result.index_select(1 + g, torch.from_numpy(high)),
            weight,
        )  # fmt: skip
        if fill is not None and outside.any():
            result = torch.where(torch.from_numpy(outside).reshape(view), torch.tensor(float(fill)), result)
    return result.numpy()


def _resample_general(
    channels: np.ndarray, mapping: np.ndarray, shape: tuple[int, ...], fill: float | None
) -> np.ndarray:
    out = np.empty((len(channels), *shape), dtype=np.float32)
    j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    mode, cval = ("nearest", 0.0) if fill is None else ("constant", float(fill))
    for i in range(shape[0]):
        index = np.stack([np.full(j.shape, i), j, k, np.ones(j.shape)]).reshape(4, -1)
        where = (mapping @ index)[:3]
        for channel, array in enumerate(channels):
            out[channel, i] = map_coordinates(array, where, order=1, mode=mode, cval=cval).reshape(j.shape)
    return out
