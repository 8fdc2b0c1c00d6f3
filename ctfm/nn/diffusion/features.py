"""Features of a frozen denoiser for the LCTfound adapters, read with forward hooks, in 2D or 3D.

Segmentation (Baranchuk et al., as LCTfound): the decoder (up-block) activations at several timesteps, the same
noise for all, upsampled to the input size (bilinear in 2D, trilinear in 3D) and concatenated along channels, one
feature vector per pixel/voxel. Classification: the bottleneck (middle-block) activations at several timesteps,
concatenated along channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ctfm.errors import CTFMError
from ctfm.nn.diffusion.network import WindowConditionedUNet
from ctfm.nn.diffusion.schedule import ddpm_scheduler

#: Timesteps LCTfound-style adapters read (low noise keeps detail, higher noise adds context).
DEFAULT_TIMESTEPS = (50, 150, 250)


class DiffusionFeatures(nn.Module):
    """``forward(images, windows=None) -> (decoder features at input size, bottleneck features)``.

    ``blocks`` picks decoder blocks by index in ``unet.up_blocks`` (default: all). The denoiser stays frozen and in
    eval mode; ``seed`` fixes the noise, so a pixel's features depend on the image only.
    """

    def __init__(
        self,
        network: WindowConditionedUNet,
        timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
        blocks: Sequence[int] | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.timesteps = tuple(int(t) for t in timesteps)
        self.scheduler = ddpm_scheduler()
        if any(not 0 <= t < self.scheduler.num_train_timesteps for t in self.timesteps):
            raise CTFMError(f"timesteps must be in [0, {self.scheduler.num_train_timesteps}), got {self.timesteps}")
        up_blocks = network.unet.up_blocks
        self.blocks = tuple(range(len(up_blocks))) if blocks is None else tuple(blocks)
        self.seed = seed
        self._captured: dict[str, torch.Tensor] = {}
        for index in self.blocks:
            up_blocks[index].register_forward_hook(self._keep(f"up{index}"))
        network.unet.middle_block.register_forward_hook(self._keep("middle"))

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self._captured[name] = output

        return hook

    @property
    def decoder_channels(self) -> int:
        """Channels per pixel of the decoder features."""
        out = self.network.unet.block_out_channels
        return len(self.timesteps) * sum(tuple(reversed(out))[i] for i in self.blocks)

    @property
    def bottleneck_channels(self) -> int:
        return len(self.timesteps) * self.network.unet.block_out_channels[-1]

    def train(self, mode: bool = True) -> DiffusionFeatures:
        super().train(mode)
        self.network.eval()  # frozen: never switches to training mode
        return self

    @torch.no_grad()
    def maps(
        self, images: torch.Tensor, windows: torch.Tensor | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(the chosen decoder blocks' activations at their own sizes, timestep by timestep; bottleneck features)."""
        dims = self.network.spatial_dims
        if images.ndim != 2 + dims:
            raise CTFMError(
                f"a {dims}D denoiser needs (N, C, *spatial) images of {2 + dims} dimensions, got {tuple(images.shape)}"
            )
        # One noise field for every image: an image's features must not depend on the batch it comes in.
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.randn((1, *images.shape[1:]), generator=generator).to(images).expand_as(images)
        decoder, bottleneck = [], []
        for t in self.timesteps:
            timesteps = torch.full((images.shape[0],), t, device=images.device, dtype=torch.long)
            noisy = self.scheduler.add_noise(images, noise, timesteps)
            self._captured.clear()
            self.network(noisy, timesteps, windows)
            decoder += [self._captured[f"up{index}"] for index in self.blocks]
            bottleneck.append(self._captured["middle"])
        return decoder, torch.cat(bottleneck, dim=1)

    def forward(self, images: torch.Tensor, windows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        decoder, bottleneck = self.maps(images, windows)
        mode = "bilinear" if self.network.spatial_dims == 2 else "trilinear"
        upsampled = [F.interpolate(m, size=images.shape[2:], mode=mode) for m in decoder]
        return torch.cat(upsampled, dim=1), bottleneck

    def at_points(
        self, images: torch.Tensor, points: torch.Tensor, windows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decoder features ``(N, C, P)`` at ``points`` ``(N, P, spatial_dims)`` (integer pixel/voxel indices).

        The same values as :meth:`forward` at those pixels, interpolated from each block's own (smaller) map, so
        the full-resolution feature stack (channels x every voxel, gigabytes for a 3D patch) never exists.
        """
        decoder, _ = self.maps(images, windows)
        size = torch.tensor(images.shape[2:], device=images.device, dtype=torch.float32)
        # Pixel centres in grid_sample's normalised coordinates (align_corners=False, as F.interpolate above);
        # grid_sample wants x first, so the axes are reversed; "border" clamps at the edges as interpolate does.
        grid = ((2 * points.float() + 1) / size - 1).flip(-1)
        grid = grid.reshape(grid.shape[0], grid.shape[1], *([1] * (self.network.spatial_dims - 1)), -1)
        sampled = [
            F.grid_sample(m, grid.to(m.dtype), mode="bilinear", padding_mode="border", align_corners=False)
            for m in decoder
        ]
        return torch.cat(sampled, dim=1).reshape(images.shape[0], self.decoder_channels, -1)


class PixelMLP(nn.Module):
    """A per-pixel (per-voxel) MLP classifier over feature maps: 1x1 convolutions, so it is one MLP everywhere.

    Linear -> ReLU -> BatchNorm per hidden layer, as Baranchuk et al.'s pixel classifier. BatchNorm, unlike
    GroupNorm, is a fixed per-channel affine map in eval mode, so a pixel's logits depend on its own features only:
    training on sampled pixels and predicting whole images is the same function. ``forward`` takes feature maps
    ``(N, C, *spatial)`` or feature vectors of sampled pixels ``(N, C, P)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, hidden: Sequence[int] = (128, 32)):
        super().__init__()
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [conv(in_channels, width, 1), nn.ReLU(), norm(width)]
            in_channels = width
        self.layers = nn.Sequential(*layers, conv(in_channels, num_classes, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim == 3:  # (N, C, P) sampled pixels: a 1 x P (x 1) map for the 1x1 convolutions
            n, _, points = features.shape
            maps = features.reshape(*features.shape, *([1] * (self.spatial_dims - 1)))
            return self.layers(maps).reshape(n, -1, points)
        return self.layers(features)


class BottleneckClassifier(nn.Module):
    """Bottleneck features -> conv -> global average pooling -> MLP -> class logits (LCTfound's PAP head)."""

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, width: int = 256):
        super().__init__()
        self.num_classes = num_classes
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.conv = nn.Sequential(conv(in_channels, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU())
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.conv(features).flatten(2).mean(-1))
