"""Padding with the scan's own minimum, so the border looks like the air around the head, not like water."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from monai.config import KeysCollection
from monai.transforms import MapTransform, ResizeWithPadOrCrop


class ResizeWithPadOrCropToMinimumd(MapTransform):
    """Centre-crop or pad ``keys`` to ``spatial_size``, padding each image with its global minimum.

    MONAI's ``mode="minimum"`` pads with the minimum of each line of voxels, which inside a tightly cropped head
    is brain rather than air; this pads with the minimum of the whole image instead.

    Args:
        keys: the image keys to resize.
        spatial_size: the output's spatial size in voxels, e.g. (z, y, x).
        allow_missing_keys: skip keys absent from an item instead of raising.
    """

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int], allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            resize = ResizeWithPadOrCrop(self.spatial_size, mode="constant", value=float(image.min()))
            out[key] = resize(image)
        return out
