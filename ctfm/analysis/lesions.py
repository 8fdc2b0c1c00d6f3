"""Crops around a lesion's seed point, in the geometry each lesion model was trained on.

Seed points come as FMCIB and DICOM give them: physical millimetres in LPS (x towards the patient's left, y
posterior, z superior). MONAI affines map voxels to RAS, so LPS points flip the sign of x and y first; getting this
wrong crops the mirror image of the lesion, which is why the crop keeps its affine (the seed maps to its centre
voxel) and stays in HU, so users can look at what the model saw.

A scan is oriented and resampled once (:func:`prepare_scan`); :func:`crop_prepared` then cuts any number of crops.
For many seeds in one scan, :func:`prepare_grid` orients the scan and only works out the resampled grid; each
:meth:`ScanGrid.crop` then resamples just its own box of that grid, with the same interpolation, so the crops equal
those of the whole resampled scan while the rest of the scan is never resampled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import BorderPad, Orientation, Spacing, SpatialCrop, SpatialResample

from ctfm.errors import CTFMError, UsageError
from ctfm.transforms.lesion_crop import LesionCrop
from ctfm.transforms.preprocess import RAS_LABELS, LoadCT

AIR_HU = -1024.0
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


class SeedOutsideScanError(CTFMError, ValueError):
    """The seed point lies outside the scan's field of view."""


def named_crop(model_name: str) -> LesionCrop:
    """The lesion crop of the registry model ``model_name`` (``fmcib``, ``ct-fm``): ``ctfm features --crop``."""
    from ctfm.hub.registry import MODELS

    if model_name not in MODELS:
        raise UsageError(f"unknown crop {model_name!r}: name a registry model ({', '.join(MODELS)})")
    return MODELS[model_name].lesion_crop


def to_ras(point: Sequence[float], coords: str = "LPS") -> np.ndarray:
    """A physical point in RAS mm from ``LPS`` (FMCIB, DICOM, ITK) or ``RAS`` (NIfTI, MONAI) coordinates."""
    values = np.asarray(point, dtype=np.float64)
    if values.shape != (3,) or not np.isfinite(values).all():
        raise CTFMError(f"a seed point is three finite numbers (x, y, z) in mm, got {list(point)}")
    if coords.upper() == "LPS":
        return values * _LPS_TO_RAS
    if coords.upper() == "RAS":
        return values
    raise ValueError(f"coords must be 'LPS' or 'RAS', got {coords!r}")


def _spacing(spacing: Sequence[float], lazy: bool = False) -> Spacing:
    return Spacing(pixdim=tuple(float(s) for s in spacing), mode="bilinear", padding_mode="border", lazy=lazy)


def _oriented(image: str | Path | MetaTensor, orientation: str) -> MetaTensor:
    return cast(MetaTensor, Orientation(axcodes=orientation, labels=RAS_LABELS)(LoadCT()(image)).float())


def prepare_scan(image: str | Path | MetaTensor, orientation: str, spacing: Sequence[float]) -> MetaTensor:
    """The scan in HU, oriented ``orientation`` and resampled to ``spacing`` mm (bilinear), once for all seeds."""
    return cast(MetaTensor, _spacing(spacing)(_oriented(image, orientation)))


@dataclass(frozen=True)
class ScanGrid:
    """An oriented scan in HU and the grid :func:`prepare_scan` would resample it to (``affine``: voxel -> RAS)."""

    volume: MetaTensor
    affine: np.ndarray
    shape: tuple[int, ...]

    def crop(self, point_ras: np.ndarray, size: Sequence[int], *, name: str = "scan") -> MetaTensor:
        """What ``crop_prepared(prepare_scan(...), point_ras, size)`` gives, resampling only the crop's box."""
        start, end, inside_start, inside_end = _crop_box(self.affine, self.shape, point_ras, size, name)
        box = self.affine.copy()
        box[:3, 3] = (self.affine @ np.append(inside_start, 1.0))[:3]
        resample = SpatialResample(mode="bilinear", padding_mode="border")
        spatial_size = tuple(int(n) for n in inside_end - inside_start)
        crop = cast(MetaTensor, resample(self.volume, dst_affine=torch.as_tensor(box), spatial_size=spatial_size))
        return _pad_with_air(crop, start, end, inside_start, inside_end)


def prepare_grid(image: str | Path | MetaTensor, orientation: str, spacing: Sequence[float]) -> ScanGrid:
    """The scan read and oriented once, and the resampled grid worked out without resampling anything."""
    volume = _oriented(image, orientation)
    # MONAI's own output grid; the volume itself is left as it is
    pending = cast(MetaTensor, _spacing(spacing, lazy=True)(volume))
    shape = tuple(int(n) for n in pending.peek_pending_shape())
    return ScanGrid(volume, np.asarray(pending.peek_pending_affine(), dtype=np.float64), shape)


def crop_prepared(volume: MetaTensor, point_ras: np.ndarray, size: Sequence[int], *, name: str = "scan") -> MetaTensor:
    """A ``size`` crop of a prepared volume whose voxel ``size // 2`` holds the seed (nearest voxel, as FMCIB).

    Parts beyond the scan are air (-1024 HU). A seed outside the scan raises :class:`SeedOutsideScanError`.
    """
    affine = np.asarray(volume.affine, dtype=np.float64)
    start, end, inside_start, inside_end = _crop_box(affine, volume.shape[1:], point_ras, size, name)
    crop = cast(MetaTensor, SpatialCrop(roi_start=inside_start.tolist(), roi_end=inside_end.tolist())(volume))
    return _pad_with_air(crop, start, end, inside_start, inside_end)


def _crop_box(
    affine: np.ndarray, spatial: Sequence[int], point_ras: np.ndarray, size: Sequence[int], name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The crop's voxel box on a grid (start, end) and its part inside the grid; refuses a seed outside it."""
    grid = np.asarray(spatial)
    index = (np.linalg.inv(affine) @ np.append(point_ras, 1.0))[:3]
    if ((index < -0.5) | (index > grid - 0.5)).any():
        extent = ", ".join(f"0..{n - 1}" for n in grid)
        raise SeedOutsideScanError(
            f"{name}: seed point (RAS mm {np.round(point_ras, 1).tolist()}) falls at voxel "
            f"{np.round(index, 1).tolist()}, outside the scan (voxels {extent})"
        )
    centre = np.rint(index).astype(int)
    box = np.asarray([int(s) for s in size])
    start = centre - box // 2
    end = start + box
    return start, end, np.maximum(start, 0), np.minimum(end, grid)


def _pad_with_air(
    crop: MetaTensor, start: np.ndarray, end: np.ndarray, inside_start: np.ndarray, inside_end: np.ndarray
) -> MetaTensor:
    border = [int(v) for pair in zip(inside_start - start, end - inside_end, strict=True) for v in pair]
    if any(border):
        crop = cast(MetaTensor, BorderPad(spatial_border=border, mode="constant", value=AIR_HU)(crop))
    return crop


def lesion_crop(
    image: str | Path | MetaTensor,
    point: Sequence[float],
    *,
    coords: str = "LPS",
    size: Sequence[int] = (50, 50, 50),
    spacing: float | Sequence[float] = 1.0,
    orientation: str = "LPS",
) -> MetaTensor:
    """The ``size`` crop around ``point`` at ``spacing`` mm, in HU, with its affine (the seed at its centre voxel).

    The defaults are FMCIB's crop (1 mm, 50 x 50 x 50, LPS).

    Args:
        image: a path (NIfTI, NRRD, MHA, DICOM folder) or an HU MetaTensor.
        point: the seed (x, y, z) in millimetres, in ``coords``.
        coords: ``"LPS"`` (FMCIB, DICOM, ITK, 3D Slicer's markups) or ``"RAS"`` (NIfTI, MONAI): mixing them up
            crops the mirror image of the lesion.
        size: crop size in voxels along the crop's axes.
        spacing: voxel size in mm, one value for isotropic.
        orientation: axis codes the crop is resampled to.

    Returns:
        A float32 ``(1, *size)`` MetaTensor in HU whose affine puts the seed at voxel ``size // 2``; regions
        outside the scan are air (-1024 HU).

    Raises:
        SeedOutsideScanError: the seed lies outside the scan's field of view.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> scan = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> crop = ctfm.lesion_crop(scan, (0.0, 0.0, 0.0), size=(16, 16, 16))  # LPS mm, FMCIB's geometry
        >>> tuple(crop.shape), crop.dtype
        ((1, 16, 16, 16), torch.float32)
    """
    spacing = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(float(s) for s in spacing)
    volume = prepare_scan(image, orientation, spacing)
    name = str(image) if not isinstance(image, MetaTensor) else str(image.meta.get("filename_or_obj", "scan"))
    return crop_prepared(volume, to_ras(point, coords), size, name=name)
