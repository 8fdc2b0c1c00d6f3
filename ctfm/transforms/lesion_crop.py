"""How a lesion model's input is cut around a seed point: orientation, voxel size, crop size and HU scaling.

A model's registry entry (:class:`ctfm.hub.registry.ModelSpec`) carries its crop, so ``ctfm features`` crops each
lesion as the model was trained without a second table keyed by model name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ctfm.transforms.preprocess import HU_RANGE


@dataclass(frozen=True)
class LesionCrop:
    """How a model's lesion input is made: orientation, voxel size (mm), crop size (voxels) and HU scaling.

    ``clip=False`` maps HU linearly, ``(HU - low) / (high - low)``, without clipping (FMCIB's normalisation).

    Attributes:
        orientation: axis codes of the crop, e.g. ``"LPS"`` (FMCIB) or ``"SPL"`` (CT-FM).
        spacing: voxel size in mm along the crop's axes.
        size: crop size in voxels along the crop's axes.
        hu_range: ``(low, high)`` HU mapped to [0, 1].
        clip: clip to [0, 1] after scaling (CT-FM) or not (FMCIB).
    """

    orientation: str
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]
    hu_range: tuple[float, float]
    clip: bool

    def normalise(self, hu: torch.Tensor) -> torch.Tensor:
        low, high = self.hu_range
        scaled = (hu - low) / (high - low)
        return scaled.clamp(0.0, 1.0) if self.clip else scaled


#: FMCIB's crop: 1 mm isotropic, 50 x 50 x 50 around the seed in LPS orientation, (HU + 1024) / 3072 unclipped.
FMCIB_CROP = LesionCrop("LPS", (1.0, 1.0, 1.0), (50, 50, 50), (-1024.0, 2048.0), clip=False)
#: CT-FM's own patch: 24 x 128 x 128 at 3 x 1 x 1 mm (SPL), the canonical [-1024, 2048] HU -> [0, 1], clipped.
CT_FM_CROP = LesionCrop("SPL", (3.0, 1.0, 1.0), (24, 128, 128), HU_RANGE, clip=True)
