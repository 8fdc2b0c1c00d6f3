"""FMCIB's encoder (Pai et al., Nature Machine Intelligence 2024): MONAI's 3D ResNet-50 exactly as FMCIB builds it.

One input channel, ``widen_factor=2`` (so the pooled features are 2 x 2048 = 4096-d), a stride-2 first convolution
along every axis and no classification layer (``feed_forward=False``): the module returns the features.
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets.resnet import ResNet, ResNetBottleneck, get_inplanes

FMCIB_EMBEDDING_DIM = 4096
FMCIB_CONFIG: dict[str, Any] = {"n_input_channels": 1, "widen_factor": 2, "conv1_t_stride": 2, "feed_forward": False}
_RESNET50_LAYERS = [3, 4, 6, 3]


class FMCIBResNet50(ResNet):
    """MONAI's ``resnet50`` with FMCIB's arguments (state-dict keys are MONAI's: ``conv1.*``, ``layer1.*``, ...)."""

    def __init__(self, **overrides: Any):
        super().__init__(ResNetBottleneck, _RESNET50_LAYERS, get_inplanes(), **{**FMCIB_CONFIG, **overrides})


def fmcib_resnet50(**overrides: Any) -> FMCIBResNet50:
    """The FMCIB trunk; ``overrides`` change its MONAI ``ResNet`` arguments."""
    return FMCIBResNet50(**overrides)
