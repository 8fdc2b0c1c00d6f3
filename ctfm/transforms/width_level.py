"""Intensity windows as (width, level) in HU: the scaling between HU and the [-1, 1] the diffusion networks see.

A window of width ``w`` and level ``l`` maps ``l - w / 2`` HU to -1 and ``l + w / 2`` HU to 1, clipping outside; the
same pair is the denoiser's condition. :func:`~ctfm.transforms.window.check_window` checks a pair.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform

from ctfm.transforms.preprocess import HU_RANGE
from ctfm.transforms.window import check_window

#: LCTfound's two windows (width, level) in HU: lung and mediastinal.
LCTFOUND_WINDOWS = ((1500.0, -500.0), (400.0, 0.0))
#: LCTfound's lung window (width, level) in HU: the diffusion adapters' default condition.
LUNG_WINDOW = LCTFOUND_WINDOWS[0]


def apply_window(hu: torch.Tensor | np.ndarray, width: float, level: float) -> torch.Tensor:
    """HU -> [-1, 1]: ``level - width / 2`` becomes -1, ``level + width / 2`` becomes 1, clipped outside.

    Args:
        hu: intensities in HU, any shape.
        width: the window's width in HU (> 0).
        level: the window's centre in HU.

    Returns:
        A float32 tensor of ``hu``'s shape in [-1, 1].

    Examples:
        >>> apply_window(torch.tensor([-1250.0, -500.0, 250.0, 3000.0]), 1500, -500).tolist()
        [-1.0, 0.0, 1.0, 1.0]
    """
    hu = torch.as_tensor(hu, dtype=torch.float32)
    return ((hu - (level - width / 2)) / width * 2 - 1).clamp(-1, 1)


def remove_window(image: torch.Tensor, width: float, level: float) -> torch.Tensor:
    """[-1, 1] -> HU inside the window (the inverse of :func:`apply_window` where nothing was clipped).

    Args:
        image: values in [-1, 1], any shape.
        width: the window's width in HU.
        level: the window's centre in HU.

    Returns:
        A float tensor of ``image``'s shape in HU.

    Examples:
        >>> remove_window(torch.tensor([-1.0, 0.0, 1.0]), 1500, -500).tolist()
        [-1250.0, -500.0, 250.0]
    """
    return (image.float() + 1) / 2 * width + (level - width / 2)


class Windowd(MapTransform):
    """Preprocessed ``[0, 1]`` image (``HU_RANGE``) -> HU -> ``window`` -> [-1, 1]; adds ``"window"`` (2,) in HU.

    Args:
        window: ``(width, level)`` in HU.
        key: the image's key.
    """

    def __init__(self, window: Sequence[float], key: str = "image"):
        super().__init__([key])
        self.window = check_window(*window)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        low, high = HU_RANGE
        for key in self.keys:
            image = out[key]
            windowed = apply_window(image.as_tensor() * (high - low) + low, *self.window)
            out[key] = image.set_array(windowed) if hasattr(image, "set_array") else windowed
        out["window"] = torch.tensor(self.window, dtype=torch.float32)
        return out
