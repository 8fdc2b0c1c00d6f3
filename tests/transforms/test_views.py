"""Two-view patch sampling: shapes, where views come from, seeding, and and the cheap-order augmentation."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctfm.data.sample import generate_ct
from ctfm.transforms.preprocess import CTPreprocessing
from ctfm.transforms.views import ContrastiveViews, RandScaledCrop, view_augmentation

PATCH = (8, 32, 32)


def random_crop(shape):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def identity_augmentation():
    return view_augmentation(
        PATCH,
        crop_scale=(1.0, 1.0),
        flip_prob=0.0,
        affine_prob=0.0,
        intensity_scale_prob=0.0,
        histogram_shift_prob=0.0,
        smooth_prob=0.0,
    )


@pytest.fixture(scope="module")
def volume():
    """A preprocessed synthetic torso, (1, z, y, x) in [0, 1]."""
    sample = generate_ct((40, 96, 96), (3.0, 1.0, 1.0), seed=0)
    image = MetaTensor(torch.from_numpy(sample.hu.astype(np.float32))[None], affine=torch.as_tensor(sample.affine))
    return CTPreprocessing(min_size=PATCH)(image).as_tensor()


def test_views_shape_dtype_and_range(volume):
    views = ContrastiveViews(PATCH, patches_per_scan=3).set_random_state(0)(volume)
    assert views.shape == (3, 2, 1, *PATCH) and views.dtype == torch.float32
    assert torch.isfinite(views).all()
    # Histogram shift stays inside the patch's range; intensity scaling adds at most 10 %.
    assert views.min() >= 0.0 and views.max() <= 1.1


def test_without_augmentation_both_views_are_the_same_patch_of_the_volume():
    grid = torch.arange(20 * 40 * 50, dtype=torch.float32).reshape(1, 20, 40, 50) / (20 * 40 * 50)
    views = ContrastiveViews(PATCH, 4, identity_augmentation()).set_random_state(1)(grid)
    assert torch.equal(views[:, 0], views[:, 1])
    for view in views[:, 0]:
        z, y, x = np.unravel_index(int(torch.argmin(view)), view.shape[1:])
        assert (z, y, x) == (0, 0, 0)  # values increase along every axis: the corner is the minimum
        start = np.unravel_index(int(round(float(view[0, 0, 0, 0]) * grid.numel())), grid.shape[1:])
        box = tuple(slice(s, s + p) for s, p in zip(start, PATCH))
        assert torch.equal(view, grid[(slice(None), *box)])


def test_views_of_one_patch_differ_but_match_better_than_views_of_other_patches(volume):
    views = ContrastiveViews(PATCH, patches_per_scan=16).set_random_state(0)(volume)[:, :, 0].flatten(2)
    assert not torch.equal(views[:, 0], views[:, 1])
    centred = views - views.mean(-1, keepdim=True)
    unit = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    correlation = unit[:, 0] @ unit[:, 1].T  # [m, n]: view 1 of patch m against view 2 of patch n
    same = correlation.diagonal().mean()
    other = correlation[~torch.eye(16, dtype=torch.bool)].mean()
    assert same > other + 0.1


def test_augmenting_never_changes_the_patch_both_views_start_from():
    patch = random_crop((1, *PATCH))
    original = patch.clone()
    augmentation = view_augmentation(PATCH, affine_prob=0.5).set_random_state(0)
    for _ in range(20):
        augmentation(patch)
    assert torch.equal(patch, original)


def test_seeding_reproduces_and_different_seeds_differ(volume):
    first = ContrastiveViews(PATCH, 2).set_random_state(7)(volume)
    again = ContrastiveViews(PATCH, 2).set_random_state(7)(volume)
    other = ContrastiveViews(PATCH, 2).set_random_state(8)(volume)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_uint16_cache_values_are_read_as_unit_range(volume):
    quantised = np.rint(volume.numpy() * 65535).astype(np.uint16)
    from_uint16 = ContrastiveViews(PATCH, 3, identity_augmentation()).set_random_state(3)(quantised)
    from_float = ContrastiveViews(PATCH, 3, identity_augmentation()).set_random_state(3)(volume)
    assert torch.allclose(from_uint16, from_float, atol=1 / 65535)


def test_volume_smaller_than_a_patch_is_padded_with_air():
    small = torch.full((1, 5, 20, 40), 0.5)
    views = ContrastiveViews(PATCH, 2, identity_augmentation()).set_random_state(0)(small)
    assert views.shape == (2, 2, 1, *PATCH)
    assert torch.all(views[..., :5, :20, :32] == 0.5) and torch.all(views[..., 5:, :, :] == 0)


def test_an_augmentation_that_changes_the_shape_is_refused(volume):
    views = ContrastiveViews(PATCH, 1, augmentation=lambda patch: patch[:, :4])
    with pytest.raises(ValueError, match="must return shape"):
        views(volume)


def test_scaled_crop_keeps_the_aspect_ratio():
    crop = RandScaledCrop((0.33, 1.0)).set_random_state(0)
    for _ in range(20):
        shape = crop(torch.zeros(1, 24, 128, 128)).shape[1:]
        scales = np.array(shape) / np.array((24, 128, 128))
        assert 0.3 <= scales.min() and scales.max() <= 1.0
        assert scales.max() - scales.min() < 1 / 24 + 1e-6  # one scale for all axes, up to rounding
