"""Builders for the published CT-FM architectures, on MONAI's SegResNet family.

The public checkpoints are plain MONAI modules, so the builders return MONAI classes unchanged: that is what
keeps state-dict keys identical to the released weights (``conv_init.*``, ``layers.{i}.blocks.{j}.*``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from monai.networks.nets.segresnet_ds import SegResEncoder, SegResNetDS
from torch import nn

CT_FM_INIT_FILTERS = 32
CT_FM_BLOCKS_DOWN = (1, 2, 2, 4, 4)
#: The published CT-FM encoder's constructor arguments: the ``config.json`` of project-lighter/ct_fm_feature_extractor.
CT_FM_CONFIG: Mapping[str, Any] = MappingProxyType(
    {"spatial_dims": 3, "in_channels": 1, "init_filters": CT_FM_INIT_FILTERS, "blocks_down": list(CT_FM_BLOCKS_DOWN)}
)


def ct_fm_encoder(
    spatial_dims: int = 3,
    in_channels: int = 1,
    init_filters: int = CT_FM_INIT_FILTERS,
    blocks_down: Sequence[int] = CT_FM_BLOCKS_DOWN,
) -> SegResEncoder:
    """The CT-FM feature extractor: stride-16 SegResEncoder, BatchNorm + ReLU, ``init_filters * 16`` deep channels."""
    return SegResEncoder(
        spatial_dims=spatial_dims, in_channels=in_channels, init_filters=init_filters, blocks_down=tuple(blocks_down)
    )


def ct_fm_segresnet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    init_filters: int = CT_FM_INIT_FILTERS,
    blocks_down: Sequence[int] = CT_FM_BLOCKS_DOWN,
    dsdepth: int = 1,
) -> SegResNetDS:
    """SegResNetDS whose encoder has the CT-FM shape, so ``encoder.*`` weights transfer one to one."""
    return SegResNetDS(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        dsdepth=dsdepth,
    )


def encoder_of(model: nn.Module) -> SegResEncoder:
    """The SegResEncoder inside ``model`` (the model itself, or a SegResNetDS's ``encoder``)."""
    if isinstance(model, SegResEncoder):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, SegResEncoder):
        return encoder
    raise TypeError(f"{type(model).__name__} has no SegResEncoder; expected a CT-FM encoder or SegResNetDS")


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Embedding of a batch: global average pool of the deepest encoder map, shape ``(batch, channels)``."""
    deepest = encoder_of(model)(x)[-1]
    return deepest.flatten(2).mean(dim=2)
