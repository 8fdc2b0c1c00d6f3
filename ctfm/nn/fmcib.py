"""FMCIB's encoder (Pai et al., Nature Machine Intelligence 2024): MONAI's 3D ResNet-50 exactly as FMCIB builds it.

One input channel, ``widen_factor=2`` (so the pooled features are 2 x 2048 = 4096-d), a stride-2 first convolution
along every axis and no classification layer (``feed_forward=False``): the module returns the features.
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets import resnet50
from monai.networks.nets.resnet import ResNet

FMCIB_EMBEDDING_DIM = 4096
FMCIB_CONFIG: dict[str, Any] = {"n_input_channels": 1, "widen_factor": 2, "conv1_t_stride": 2, "feed_forward": False}


def fmcib_resnet50(**overrides: Any) -> ResNet:
    """The FMCIB trunk; ``overrides`` change its MONAI ``ResNet`` arguments (tests use none)."""
    return resnet50(pretrained=False, **{**FMCIB_CONFIG, **overrides})
