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
    """The CT-FM feature extractor: stride-16 SegResEncoder, BatchNorm + ReLU, ``init_filters * 16`` deep channels.

    The defaults build the published encoder (512 deep channels), whose weights ``ctfm.load("ct-fm")`` reads; a
    smaller ``init_filters`` gives a narrower network of the same depth (a distillation student, a quick test).

    Args:
        spatial_dims: 3 for volumes ``(B, C, D, H, W)``, 2 for slices.
        in_channels: input channels; CT-FM reads one (the [0, 1]-scaled HU volume).
        init_filters: channels of the first level, doubled at each of the four downsamplings.
        blocks_down: residual blocks per level; five levels make the stride 16.

    Returns:
        A MONAI ``SegResEncoder`` (state-dict keys as in the released weights); called on ``(B, C, D, H, W)`` it
        returns one feature map per level, the deepest ``(B, init_filters * 16, D/16, H/16, W/16)``.

    Examples:
        >>> import torch
        >>> from ctfm.nn import ct_fm_encoder, pooled_features
        >>> encoder = ct_fm_encoder(init_filters=4)
        >>> [tuple(m.shape) for m in encoder(torch.rand(2, 1, 16, 32, 32))][-1]
        (2, 64, 1, 2, 2)
        >>> pooled_features(encoder, torch.rand(2, 1, 16, 32, 32)).shape
        torch.Size([2, 64])
    """
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
    """SegResNetDS whose encoder has the CT-FM shape, so ``encoder.*`` weights transfer one to one.

    The segmentation recipes start from it and load the pretrained encoder into ``.encoder``.

    Args:
        spatial_dims: 3 for volumes ``(B, C, D, H, W)``.
        in_channels: input channels; one for CT.
        out_channels: classes predicted, background included.
        init_filters: channels of the first level (32 for CT-FM).
        blocks_down: residual blocks per encoder level (CT-FM's by default).
        dsdepth: decoder levels with an output head; more than 1 adds deep-supervision outputs in training.

    Returns:
        A MONAI ``SegResNetDS`` mapping ``(B, C, D, H, W)`` (each spatial size a multiple of 16) to logits
        ``(B, out_channels, D, H, W)``.

    Examples:
        >>> import torch
        >>> from ctfm.nn import ct_fm_segresnet
        >>> network = ct_fm_segresnet(init_filters=4, out_channels=3).eval()
        >>> network(torch.rand(1, 1, 16, 32, 32)).shape
        torch.Size([1, 3, 16, 32, 32])
    """
    return SegResNetDS(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=out_channels,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        dsdepth=dsdepth,
    )


def encoder_of(model: nn.Module) -> SegResEncoder:
    """The SegResEncoder inside ``model`` (the model itself, or a SegResNetDS's ``encoder``).

    Args:
        model: a CT-FM encoder, or a network holding one at ``.encoder`` (SegResNetDS, ScanClassifier,
            ContrastiveNetwork).

    Returns:
        The encoder module itself (not a copy): changing it changes ``model``.

    Raises:
        TypeError: ``model`` carries no SegResEncoder.
    """
    if isinstance(model, SegResEncoder):
        return model
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, SegResEncoder):
        return encoder
    raise TypeError(f"{type(model).__name__} has no SegResEncoder; expected a CT-FM encoder or SegResNetDS")


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Embedding of a batch: global average pool of the deepest encoder map.

    Args:
        model: a CT-FM encoder or a network carrying one (see :func:`encoder_of`).
        x: preprocessed input ``(B, 1, D, H, W)`` in [0, 1].

    Returns:
        ``(B, channels)``: 512 channels for CT-FM.
    """
    deepest = encoder_of(model)(x)[-1]
    return deepest.flatten(2).mean(dim=2)
