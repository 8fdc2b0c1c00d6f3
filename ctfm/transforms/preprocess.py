"""The one canonical CT preprocessing shared by pretraining, embedding and every recipe.

Pretraining saw scans oriented SPL (array axes z, y, x), resampled to 3 x 1 x 1 mm, clipped to [-1024, 2048] HU
and scaled to [0, 1], cropped to the body and padded with air to at least one patch. Embedding a scan any other
way shifts its features, so every entry point goes through :class:`CTPreprocessing`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForeground, Orientation, ScaleIntensityRange, Spacing, SpatialPad, Transform

from ctfm.io.reader import read_ct

#: Pretraining geometry: (z, y, x) voxel spacing in mm after orientation SPL.
PRETRAINING_SPACING = (3.0, 1.0, 1.0)
#: HU range mapped to [0, 1]; air (-1024 HU) becomes exactly 0, which is also the padding value.
HU_RANGE = (-1024.0, 2048.0)
#: Pretraining patch (z, y, x) in voxels: 7.2 x 12.8 x 12.8 cm at PRETRAINING_SPACING.
PATCH_SIZE = (24, 128, 128)
#: MONAI's axis labels for RAS affines, passed explicitly so orientation never depends on a changing default.
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


class AboveThreshold:
    """``x > threshold`` as a picklable callable: the foreground test of the crop (DataLoader workers pickle it).

    Args:
        threshold: the intensity above which a voxel is foreground, on the scale the crop sees ([0, 1] after
            scaling, see :attr:`CTPreprocessing.body_threshold`).
    """

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x > self.threshold


class LoadCT(Transform):
    """Path -> validated HU MetaTensor; a MetaTensor passes through (so in-memory scans share the pipeline).

    Calling it with a path reads the scan with :func:`ctfm.io.reader.read_ct`; a 3D MetaTensor gets its channel
    axis, a 4D one is returned as it is.

    Args:
        check_hu: refuse volumes whose values are clearly not HU (see :func:`~ctfm.io.reader.read_ct`).

    Examples:
        >>> import tempfile
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.transforms import LoadCT
        >>> path = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> scan = LoadCT()(path)
        >>> tuple(scan.shape), float(scan.min()) < -900  # (1, I, J, K) in HU: air is about -1000
        ((1, 64, 64, 24), True)
    """

    def __init__(self, check_hu: bool = True):
        self.check_hu = check_hu

    def __call__(self, image: str | Path | MetaTensor) -> MetaTensor:
        if isinstance(image, MetaTensor):
            return image if image.ndim == 4 else cast(MetaTensor, image[None])
        return read_ct(image, check_hu=self.check_hu)


@dataclass(frozen=True)
class CTPreprocessing:
    """Settings of the canonical preprocessing; calling it maps a path or HU MetaTensor to model input.

    The steps: read and check HU, orient SPL (array axes z, y, x), resample, clip ``hu_range`` and scale it to
    [0, 1], crop to the body, pad with air to ``min_size``. The defaults are the pretraining's; embedding with
    other settings shifts the features.

    Args:
        spacing: (z, y, x) voxel size in mm to resample to; ``None`` keeps the native voxel size (the public
            model card's variant).
        hu_range: the HU interval mapped to [0, 1], values outside clipped; air (-1024 HU) becomes 0.
        min_size: pad (with air) to at least this (z, y, x) size in voxels, so one patch fits.
        crop_foreground: crop to the bounding box of the body, dropping the air around it.
        body_threshold_hu: what counts as body for the crop: voxels above it (default -500 HU: body, not air or
            noise in air).
        check_hu: refuse inputs whose values are clearly not HU (already scaled, or missing their intercept).

    Examples:
        >>> import tempfile
        >>> from ctfm.data.sample import generate_ct, write_nifti
        >>> from ctfm.transforms import CTPreprocessing
        >>> path = write_nifti(generate_ct((24, 64, 64), seed=1), tempfile.mkdtemp() + "/scan.nii.gz")
        >>> volume = CTPreprocessing(min_size=(8, 32, 32))(path)  # (1, z, y, x) at 3 x 1 x 1 mm, cropped to the body
        >>> tuple(volume.shape), volume.dtype, 0.0 <= float(volume.min()) <= float(volume.max()) <= 1.0
        ((1, 20, 43, 52), torch.float32, True)
    """

    spacing: tuple[float, ...] | None = PRETRAINING_SPACING
    hu_range: tuple[float, float] = HU_RANGE
    min_size: tuple[int, ...] = PATCH_SIZE
    crop_foreground: bool = True
    body_threshold_hu: float = -500.0
    check_hu: bool = True

    def __post_init__(self) -> None:
        for name in ("spacing", "hu_range", "min_size"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))

    @property
    def body_threshold(self) -> float:
        """``body_threshold_hu`` on the [0, 1] scale the crop sees."""
        low, high = self.hu_range
        return (self.body_threshold_hu - low) / (high - low)

    def transforms(self) -> Compose:
        """The MONAI pipeline itself (array form), for users who want to extend it.

        :class:`ctfm.transforms.dictionary.CTPreprocessingd` is the same pipeline for dictionaries, where label
        maps follow the image and predictions can be inverted onto the input's grid.
        """
        low, high = self.hu_range
        threshold = self.body_threshold
        steps: list[Transform] = [LoadCT(check_hu=self.check_hu), Orientation(axcodes="SPL", labels=RAS_LABELS)]
        if self.spacing is not None:
            steps.append(Spacing(pixdim=self.spacing, mode="bilinear", padding_mode="border"))
        steps.append(ScaleIntensityRange(a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
        if self.crop_foreground:
            steps.append(CropForeground(select_fn=AboveThreshold(threshold), allow_smaller=True))
        steps.append(SpatialPad(spatial_size=self.min_size, mode="constant", value=0.0))
        return Compose(steps)

    def __call__(self, image: str | Path | MetaTensor) -> MetaTensor:
        # Load outside the Compose: MONAI wraps a transform's exception in RuntimeError("applying transform ..."),
        # and callers must see the InvalidScanError that names the file. LoadCT in the pipeline then passes through.
        out = cast(MetaTensor, self.transforms()(LoadCT(check_hu=self.check_hu)(image)))
        return cast(MetaTensor, out.float()) if out.dtype != torch.float32 else out


def as_model_input(array: np.ndarray | torch.Tensor, min_size: Sequence[int] = PATCH_SIZE) -> MetaTensor:
    """Wrap an already preprocessed ``(z, y, x)`` or ``(1, z, y, x)`` array in [0, 1], padding it to ``min_size``.

    A MetaTensor keeps its affine (shifted by the padding), so patch positions still map to world coordinates.
    """
    if isinstance(array, MetaTensor):
        tensor = array.float()
    else:
        tensor = MetaTensor(
            torch.as_tensor(array if isinstance(array, torch.Tensor) else np.asarray(array), dtype=torch.float32)
        )
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[0] != 1:
        raise ValueError(f"expected a (z, y, x) or (1, z, y, x) array, got shape {tuple(tensor.shape)}")
    return cast(MetaTensor, SpatialPad(spatial_size=tuple(min_size), mode="constant", value=0.0)(tensor))
