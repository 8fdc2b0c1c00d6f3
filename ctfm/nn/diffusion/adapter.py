"""LCTfound's label-efficient adapters as networks: a frozen denoiser's features and a small trainable head.

Segmentation reads the decoder's features at every pixel/voxel (:class:`~ctfm.nn.diffusion.features.PixelMLP`),
classification the bottleneck's (:class:`~ctfm.nn.diffusion.features.BottleneckClassifier`); both read the denoiser
at one fixed window, its condition. The denoiser comes in built (from a checkpoint by
:func:`ctfm.hub.checkpoint.pretrained_denoiser`, as the recipes do) and stays frozen and in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctfm.nn.diffusion.features import DEFAULT_TIMESTEPS, BottleneckClassifier, DiffusionFeatures, PixelMLP
from ctfm.nn.diffusion.network import WindowConditionedUNet
from ctfm.transforms.width_level import LUNG_WINDOW
from ctfm.transforms.window import check_window


class FrozenDiffusionAdapter(nn.Module):
    """A frozen denoiser's features at ``window`` (its condition) and a trainable ``head``.

    ``forward(images)`` returns the head's logits.

    Args:
        features: the frozen denoiser's feature reader.
        head: the trainable head: a pixel MLP (segmentation) or a bottleneck classifier.
        reads: ``"decoder"`` (per-pixel features, segmentation) or ``"bottleneck"`` (classification).
        window: ``(width, level)`` in HU the denoiser is conditioned on; the images are windowed by it.
    """

    def __init__(
        self, features: DiffusionFeatures, head: PixelMLP | BottleneckClassifier, reads: str, window: Sequence[float]
    ):
        super().__init__()
        if reads not in ("decoder", "bottleneck"):
            raise ValueError(f"reads must be 'decoder' or 'bottleneck', got {reads!r}")
        self.features = features
        self.head = head
        self.reads = reads
        self.window = check_window(*window)

    @property
    def spatial_dims(self) -> int:
        return self.features.network.spatial_dims

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def windows(self, images: torch.Tensor) -> torch.Tensor:
        """The condition, one row per image."""
        return torch.tensor(self.window, device=images.device, dtype=images.dtype).expand(images.shape[0], 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        decoder, bottleneck = self.features(images, self.windows(images))
        return self.head(decoder if self.reads == "decoder" else bottleneck)


def segmentation_adapter(
    denoiser: WindowConditionedUNet,
    num_classes: int,
    window: Sequence[float] = LUNG_WINDOW,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    blocks: Sequence[int] | None = None,
    hidden: Sequence[int] = (128, 32),
    seed: int = 0,
) -> FrozenDiffusionAdapter:
    """The frozen ``denoiser`` with a :class:`PixelMLP` over its decoder features.

    Args:
        denoiser: a pretrained window-conditioned denoiser, 2D or 3D.
        num_classes: output channels, background first.
        window: ``(width, level)`` in HU, the denoiser's condition.
        timesteps: the noise levels whose decoder features are concatenated.
        blocks: decoder blocks read, by index in ``unet.up_blocks`` (None: all).
        hidden: widths of the MLP's hidden layers.
        seed: fixes the noise, so a pixel's features depend on the image only.

    Returns:
        The adapter; only its head has trainable parameters.
    """
    features = DiffusionFeatures(denoiser, timesteps=timesteps, blocks=blocks, seed=seed)
    head = PixelMLP(denoiser.spatial_dims, features.decoder_channels, num_classes, hidden=tuple(hidden))
    return FrozenDiffusionAdapter(features, head, "decoder", window)


def classification_adapter(
    denoiser: WindowConditionedUNet,
    num_classes: int,
    window: Sequence[float] = LUNG_WINDOW,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    width: int = 256,
    seed: int = 0,
) -> FrozenDiffusionAdapter:
    """The frozen ``denoiser`` with a :class:`BottleneckClassifier` over its bottleneck features.

    Args:
        denoiser: a pretrained window-conditioned denoiser, 2D or 3D.
        num_classes: outputs: 1 (one logit) for two classes, else the number of classes.
        window: ``(width, level)`` in HU, the denoiser's condition.
        timesteps: the noise levels whose bottleneck features are concatenated.
        width: the head's width.
        seed: fixes the noise, so a scan's features depend on the image only.

    Returns:
        The adapter; only its head has trainable parameters.
    """
    features = DiffusionFeatures(denoiser, timesteps=timesteps, seed=seed)
    head = BottleneckClassifier(denoiser.spatial_dims, features.bottleneck_channels, num_classes, width=width)
    return FrozenDiffusionAdapter(features, head, "bottleneck", window)
