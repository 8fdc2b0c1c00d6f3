"""Adapter features at sampled pixels/voxels and the per-pixel head: the same numbers as the full maps, 2D and 3D."""

import pytest
import torch

from ctfm.nn.diffusion import diffusion_unet
from ctfm.nn.diffusion.features import DiffusionFeatures, PixelMLP

SHAPES = {2: (16, 24), 3: (8, 16, 24)}


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


def test_features_at_points_equal_the_upsampled_maps_there(spatial_dims):
    torch.manual_seed(0)
    shape = SHAPES[spatial_dims]
    features = DiffusionFeatures(diffusion_unet(spatial_dims, "tiny"), timesteps=(10, 300))
    images = torch.rand(2, 1, *shape) * 2 - 1
    full, _ = features(images)
    # Corners and edges included: interpolation clamps there the same way in both.
    points = torch.stack([torch.randint(0, s, (2, 40)) for s in shape], dim=-1)
    points[:, 0] = 0
    points[:, 1] = torch.tensor(shape) - 1
    sampled = features.at_points(images, points)
    assert sampled.shape == (2, features.decoder_channels, 40)
    batch = torch.arange(2)[:, None]
    expected = full.movedim(1, -1)[(batch, *points.unbind(-1))].movedim(-1, 1)
    torch.testing.assert_close(sampled, expected, atol=1e-5, rtol=1e-5)


def test_pixel_mlp_is_per_pixel_in_eval_and_takes_sampled_pixels(spatial_dims):
    torch.manual_seed(0)
    head = PixelMLP(spatial_dims, 6, 3, hidden=(8,))
    head(torch.randn(4, 6, 50))  # a training pass moves the BatchNorm statistics
    head.eval()
    maps = torch.randn(2, 6, *SHAPES[spatial_dims])
    logits = head(maps)
    assert logits.shape == (2, 3, *SHAPES[spatial_dims])
    changed = maps.clone()
    changed[(slice(None), slice(None), *([0] * spatial_dims))] += 5.0  # one pixel changes...
    moved = (head(changed) - logits).abs().flatten(2).amax(dim=1) > 1e-6
    assert moved[:, 0].all() and not moved[:, 1:].any()  # ...and only its logits move
    flat = maps.flatten(2)
    torch.testing.assert_close(head(flat), logits.flatten(2))


def test_an_images_features_do_not_depend_on_its_batch(spatial_dims):
    torch.manual_seed(0)
    features = DiffusionFeatures(diffusion_unet(spatial_dims, "tiny"), timesteps=(10, 300))
    images = torch.rand(3, 1, *SHAPES[spatial_dims]) * 2 - 1
    together, _ = features(images)
    alone, _ = features(images[2:])
    torch.testing.assert_close(together[2:], alone, atol=1e-5, rtol=1e-5)
