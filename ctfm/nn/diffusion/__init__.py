"""LCTfound-style diffusion networks, the adapters on a frozen denoiser, sampling and restoration operators, one
code path for 2D and 3D."""

from ctfm.nn.diffusion.adapter import FrozenDiffusionAdapter, classification_adapter, segmentation_adapter
from ctfm.nn.diffusion.network import (
    NULL_WINDOW,
    PRESETS,
    WindowConditionedUNet,
    WindowEmbedding,
    diffusion_unet,
)

__all__ = [
    "NULL_WINDOW",
    "PRESETS",
    "FrozenDiffusionAdapter",
    "WindowConditionedUNet",
    "WindowEmbedding",
    "classification_adapter",
    "diffusion_unet",
    "segmentation_adapter",
]
