"""[0, 1] model input stored as uint16 and back: the preprocessing cache's codec, used by whoever reads it.

uint16 takes the same two bytes per voxel as float16, but steps uniformly by 1/65535 = 0.05 HU over the whole
[-1024, 2048] HU range, where float16 steps are up to 1.5 HU near bone and 0.75 HU in soft tissue; air (0) and the
window's top (1) stay exact.
"""

from __future__ import annotations

import numpy as np
import torch

from ctfm.transforms.preprocess import HU_RANGE

#: uint16 value that stands for 1.0.
QUANTISATION_MAX = int(np.iinfo(np.uint16).max)


def quantise(volume: np.ndarray) -> np.ndarray:
    """[0, 1] floats (clipped) -> uint16, rounding to the nearest step."""
    return np.rint(np.clip(volume, 0.0, 1.0) * QUANTISATION_MAX).astype(np.uint16)


def dequantise(region: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A fresh float32 tensor in [0, 1] from stored uint16 (or any unsigned dtype's full range) or from floats.

    Always a copy, so a memory-mapped cache file is never written through.
    """
    if isinstance(region, torch.Tensor):
        return region.detach().to(dtype=torch.float32, copy=True)
    region = np.asarray(region)
    if np.issubdtype(region.dtype, np.unsignedinteger):
        return torch.from_numpy(region.astype(np.float32)).mul_(1.0 / np.iinfo(region.dtype).max)
    return torch.from_numpy(np.array(region, dtype=np.float32))


def dequantise_hu(values: np.ndarray) -> np.ndarray:
    """The cache's uint16 values -> HU (the canonical preprocessing maps ``HU_RANGE`` [-1024, 2048] HU to [0, 1]).

    Args:
        values: stored uint16 values (or floats on the same scale), any shape.

    Returns:
        float32 HU of ``values``' shape.

    Examples:
        >>> dequantise_hu(np.array([0, QUANTISATION_MAX], dtype=np.uint16)).tolist()
        [-1024.0, 2048.0]
    """
    low, high = HU_RANGE
    return values.astype(np.float32) / QUANTISATION_MAX * (high - low) + low
