"""The fast equivalents of MONAI transforms give MONAI's results."""

import pytest
import torch
from monai.transforms import GaussianSmooth, RandAffine, RandGaussianSmooth, RandHistogramShift, Resize

from ctfm.transforms.fast import FastHistogramShift, RandSmoothThenResize, SeparableResize, SkipIdleRandAffine


def test_smoothing_the_crop_blurs_the_final_view_like_smoothing_after_the_resize():
    generator = torch.Generator().manual_seed(0)
    crop = GaussianSmooth(sigma=1.0)(torch.rand(1, 12, 48, 48, generator=generator)).as_tensor()  # has structure
    fused = RandSmoothThenResize((24, 96, 96), sigma=(1.2, 1.2), prob=1.0).set_random_state(0)
    resize = Resize((24, 96, 96), mode="trilinear")
    cheap = fused(crop)
    sigma = (fused.smooth.x, fused.smooth.y, fused.smooth.z)
    reference = GaussianSmooth(sigma=sigma)(resize(crop))
    unscaled = resize(GaussianSmooth(sigma=sigma)(crop))  # MONAI's smoothing simply moved before the resize
    inside = (slice(None), slice(6, -6), slice(24, -24), slice(24, -24))  # away from the zero-padded borders

    def error(image):
        return float((image - reference)[inside].abs().mean())

    assert error(cheap) < 0.2 * error(resize(crop))
    assert error(cheap) < 0.2 * error(unscaled)


def random_crop(shape=(1, 11, 37, 50)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("size", [(24, 128, 128), (8, 20, 64)])
def test_separable_resize_equals_monai_trilinear_resize(size):
    crop = random_crop()
    expected = Resize(size, mode="trilinear")(crop)
    assert torch.allclose(SeparableResize(size)(crop), expected.as_tensor(), atol=1e-5)


def test_fast_histogram_shift_equals_monai():
    crop = random_crop()
    for seed in range(5):
        fast = FastHistogramShift(num_control_points=5, prob=1.0).set_random_state(seed)(crop)
        monai = RandHistogramShift(num_control_points=5, prob=1.0).set_random_state(seed)(crop)
        assert torch.allclose(torch.as_tensor(fast), monai.as_tensor(), atol=1e-6)
        assert not torch.allclose(torch.as_tensor(fast), crop)


def test_smoothing_at_patch_size_equals_monai_gaussian_smoothing():
    crop = random_crop()
    fused = RandSmoothThenResize(crop.shape[1:], prob=1.0).set_random_state(0)
    ours = fused(crop)
    sigma = (fused.smooth.x, fused.smooth.y, fused.smooth.z)
    assert torch.allclose(ours, GaussianSmooth(sigma=sigma)(crop).as_tensor(), atol=1e-5)


def test_the_idle_affine_returns_its_input_and_fires_when_monai_would():
    crop = random_crop()
    ours = SkipIdleRandAffine(prob=0.5, rotate_range=(0.3, 0.1, 0.1), padding_mode="border").set_random_state(0)
    monai = RandAffine(prob=0.5, rotate_range=(0.3, 0.1, 0.1), padding_mode="border").set_random_state(0)
    fired = []
    for _ in range(8):
        out, reference = ours(crop), monai(crop)
        assert monai._do_transform == ours._do_transform and out.shape == crop.shape
        fired.append(ours._do_transform)
        if ours._do_transform:
            assert not torch.allclose(torch.as_tensor(out), crop, atol=1e-3)
        else:
            assert out is crop and torch.allclose(reference.as_tensor(), crop)
    assert any(fired) and not all(fired)


def test_fused_smoothing_and_resize_equal_monai_smoothing_then_resizing():
    crop = random_crop()
    patch = (24, 64, 64)
    fused = RandSmoothThenResize(patch, prob=0.5).set_random_state(3)
    monai_draw = RandGaussianSmooth(sigma_x=(0.25, 1.5), sigma_y=(0.25, 1.5), sigma_z=(0.25, 1.5), prob=0.5)
    monai_draw.set_random_state(3)
    fired = []
    for _ in range(6):
        out = fused(crop)
        monai_draw.randomize()
        assert fused.smooth._do_transform == monai_draw._do_transform  # the same draw as MONAI's
        fired.append(monai_draw._do_transform)
        blurred = crop
        if monai_draw._do_transform:
            # sigma in final-view voxels is sigma * crop / patch voxels of the crop
            sigma = [s * c / p for s, c, p in zip((monai_draw.x, monai_draw.y, monai_draw.z), crop.shape[1:], patch)]
            blurred = GaussianSmooth(sigma=sigma)(crop)
        expected = Resize(patch, mode="trilinear")(blurred)
        assert out.shape == (1, *patch)
        assert torch.allclose(torch.as_tensor(out), torch.as_tensor(expected), atol=1e-5)
    assert any(fired) and not all(fired)
