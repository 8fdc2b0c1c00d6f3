"""CT windows stacked along a spatial axis, so a single-channel encoder sees several windows unchanged.

The head-CT triage setting of CT-FM (SinoCT) shows the model four windows of one scan, each scaled to [0, 1] with
clipping, concatenated along the first spatial axis: a 1 x 48 x 128 x 128 HU volume becomes 1 x 192 x 128 x 128.
Concatenating along a spatial axis (instead of channels) keeps the pretrained ``in_channels=1`` stem.
:func:`check_window` checks a (width, level) pair, the form diffusion conditions take.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, ScaleIntensityRange, Transform

from ctfm.errors import CTFMError

#: The four head-CT windows (HU) of CT-FM's SinoCT triage, in the order they are stacked.
HEAD_CT_WINDOWS: dict[str, tuple[float, float]] = {
    "blood": (0.0, 80.0),
    "subdural": (-125.0, 175.0),
    "stroke": (28.0, 36.0),
    "bone": (-900.0, 2100.0),
}


class CTWindows(Transform):
    """``(C, *spatial)`` HU -> each window scaled to [0, 1] (clipped), concatenated along spatial axis ``axis``.

    Args:
        windows: ``(low, high)`` HU pairs, or a mapping of names to pairs (kept in its order).
        axis: spatial axis (0 = first after the channel) the windows are stacked along; ``None`` stacks them as
            channels instead (for encoders trained with several input channels).
    """

    def __init__(
        self,
        windows: Mapping[str, Sequence[float]] | Sequence[Sequence[float]] = HEAD_CT_WINDOWS,
        axis: int | None = 0,
    ):
        pairs = list(windows.values()) if isinstance(windows, Mapping) else list(windows)
        if not pairs:
            raise ValueError("CTWindows needs at least one (low, high) window")
        for pair in pairs:
            if len(pair) != 2 or not float(pair[0]) < float(pair[1]):
                raise ValueError(f"a window is (low, high) HU with low < high, got {tuple(pair)}")
        self.windows = [(float(low), float(high)) for low, high in pairs]
        self.axis = axis
        self._scalers = [ScaleIntensityRange(low, high, 0.0, 1.0, clip=True) for low, high in self.windows]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim < 2:
            raise ValueError(f"expected a channel-first image (C, *spatial), got shape {tuple(image.shape)}")
        windowed = [torch.as_tensor(scale(image)) for scale in self._scalers]
        dim = 0 if self.axis is None else self.axis + 1
        if not 0 <= dim < image.ndim:
            raise ValueError(f"axis {self.axis} is not a spatial axis of an image of shape {tuple(image.shape)}")
        return torch.cat(windowed, dim=dim)


class CTWindowsd(MapTransform):
    """Dictionary form of :class:`CTWindows` for ``keys`` (images only: label maps are not windowed).

    Args:
        keys: the HU images to window.
        windows: ``(low, high)`` HU pairs, or a mapping of names to pairs; default the four head-CT windows.
        axis: spatial axis the windows are stacked along, ``None`` for channels (see :class:`CTWindows`).
        allow_missing_keys: skip keys absent from an item instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        windows: Mapping[str, Sequence[float]] | Sequence[Sequence[float]] = HEAD_CT_WINDOWS,
        axis: int | None = 0,
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.windowing = CTWindows(windows, axis)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = self.windowing(out[key])
        return out


def check_window(width: float, level: float) -> tuple[float, float]:
    """``(width, level)`` as floats; a width <= 0 is refused with one line (it would be the null condition)."""
    width, level = float(width), float(level)
    if not width > 0:
        raise CTFMError(f"window width must be > 0 HU, got width {width:g} and level {level:g} (e.g. lung 1500 -500)")
    return width, level
