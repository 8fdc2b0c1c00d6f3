"""Views made on the training device: the worker pipeline's transforms for fixed parameters, its distributions for
random ones, in 3D, on CPU tensors."""

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Affine, GaussianSmooth, RandHistogramShift
from monai.transforms.utils import create_rotate, create_scale
from scipy.stats import ks_2samp

from ctfm.data.sample import generate_ct
from ctfm.transforms.device_views import DeviceViews, ViewParameters, rotation_matrices
from ctfm.transforms.fast import SeparableResize
from ctfm.transforms.preprocess import CTPreprocessing
from ctfm.transforms.quantise import quantise
from ctfm.transforms.views import ContrastivePatches, view_augmentation

PATCH = (8, 32, 32)
DRAWS = 2000


def fixed(count, **changes):
    """Parameters that leave a view as its patch, with ``changes``."""
    params = {
        "crop_start": torch.zeros(count, 3, dtype=torch.long),
        "crop_size": torch.tensor([PATCH] * count),
        "flip": torch.zeros(count, dtype=torch.bool),
        "affine": torch.eye(3, dtype=torch.float64).repeat(count, 1, 1),
        "intensity": torch.ones(count, dtype=torch.float64),
        "histogram": torch.zeros(count, dtype=torch.bool),
        "control_points": torch.linspace(0, 1, 5, dtype=torch.float64).repeat(count, 1),
        "smooth": torch.zeros(count, dtype=torch.bool),
        "sigma": torch.ones(count, 3, dtype=torch.float64),
    }
    return ViewParameters(**{**params, **changes})


@pytest.fixture(scope="module")
def patch():
    """A (1, 8, 32, 32) patch of a preprocessed synthetic torso, in [0, 1]."""
    sample = generate_ct((24, 64, 64), (3.0, 1.0, 1.0), seed=0)
    image = MetaTensor(torch.from_numpy(sample.hu.astype(np.float32))[None], affine=torch.as_tensor(sample.affine))
    volume = CTPreprocessing(min_size=PATCH)(image).as_tensor()
    centre = [(s - p) // 2 for s, p in zip(volume.shape[1:], PATCH)]
    return volume[(slice(None), *(slice(c, c + p) for c, p in zip(centre, PATCH)))].contiguous()


def volumes(count=3, seed=0):
    return torch.rand(count, 1, *PATCH, generator=torch.Generator().manual_seed(seed))


def test_identity_parameters_give_back_the_patch():
    batch = volumes()
    torch.testing.assert_close(DeviceViews().apply(batch, fixed(3)), batch, atol=1e-6, rtol=0)


def test_crop_flip_and_resize_are_the_worker_pipelines():
    batch = volumes()
    starts = torch.tensor([[2, 5, 7], [0, 0, 3], [1, 12, 0]])
    sizes = torch.tensor([[5, 20, 11], [8, 32, 29], [3, 9, 9]])
    flip = torch.tensor([True, False, True])
    views = DeviceViews().apply(batch, fixed(3, crop_start=starts, crop_size=sizes, flip=flip))
    for view, volume, start, size, flipped in zip(views, batch, starts, sizes, flip):
        crop = volume[(slice(None), *(slice(int(a), int(a + n)) for a, n in zip(start, size)))]
        expected = SeparableResize(PATCH)(crop.flip(1) if flipped else crop)
        torch.testing.assert_close(view, expected, atol=1e-6, rtol=0)


def test_smoothing_with_fixed_sigmas_is_monais_gaussian_smooth():
    batch = volumes()
    sigma = torch.tensor([[0.25, 0.7, 1.5], [1.2, 0.3, 0.9], [0.5, 0.5, 0.5]], dtype=torch.float64)
    views = DeviceViews().apply(batch, fixed(3, smooth=torch.tensor([True, True, False]), sigma=sigma))
    for view, volume, s in zip(views[:2], batch, sigma):
        torch.testing.assert_close(view, GaussianSmooth(sigma=s.tolist())(volume).as_tensor(), atol=1e-6, rtol=0)
    torch.testing.assert_close(views[2], batch[2])


def test_histogram_shift_with_fixed_control_points_is_monais():
    batch = volumes(2)
    shift = RandHistogramShift(num_control_points=5, prob=1.0).set_random_state(3)
    shift.randomize()
    points = torch.tensor(shift.floating_control_points).repeat(2, 1)
    views = DeviceViews().apply(batch, fixed(2, histogram=torch.tensor([True, False]), control_points=points))
    expected = shift(batch[0], randomize=False)
    torch.testing.assert_close(views[0], torch.as_tensor(expected), atol=1e-6, rtol=0)
    torch.testing.assert_close(views[1], batch[1])


def test_intensity_scaling_multiplies():
    batch = volumes(2)
    views = DeviceViews().apply(batch, fixed(2, intensity=torch.tensor([1.07, 0.95], dtype=torch.float64)))
    torch.testing.assert_close(views, batch * torch.tensor([1.07, 0.95]).view(2, 1, 1, 1, 1))


def test_rotations_are_monais_and_the_affine_is_monais_on_a_full_size_crop():
    angles = torch.tensor([[0.2, 0.04, -0.03], [-0.26, -0.05, 0.01]], dtype=torch.float64)
    for matrix, angle in zip(rotation_matrices(angles), angles):
        np.testing.assert_allclose(matrix.numpy(), create_rotate(3, angle.tolist())[:3, :3], atol=1e-12)
    scale = 1.07
    affine = rotation_matrices(angles) @ torch.from_numpy(create_scale(3, [scale])[:3, :3])
    batch = volumes(2)
    views = DeviceViews().apply(batch, fixed(2, affine=affine))
    for view, volume, angle in zip(views, batch, angles):
        monai = Affine(rotate_params=angle.tolist(), scale_params=[scale], padding_mode="border", image_only=True)
        torch.testing.assert_close(view, torch.as_tensor(monai(volume)), atol=1e-5, rtol=0)


def test_raw_uint16_patches_become_two_views_each_in_the_unit_range(patch):
    codes = torch.from_numpy(quantise(patch.numpy())).expand(2, 3, 1, *PATCH)
    views = DeviceViews(seed=1)(codes, DeviceViews(seed=1).generator())
    assert views.shape == (2, 3, 2, 1, *PATCH) and views.dtype == torch.float32
    assert views.min() >= 0.0 and views.max() <= 1.1
    assert not torch.equal(views[:, :, 0], views[:, :, 1])
    nothing = DeviceViews(
        crop_scale=(1.0, 1.0),
        flip_prob=0.0,
        affine_prob=0.0,
        intensity_scale_prob=0.0,
        histogram_shift_prob=0.0,
        smooth_prob=0.0,
    )
    same = nothing(codes, nothing.generator())
    torch.testing.assert_close(same[0, 0, 1], patch, atol=1e-5, rtol=0)


def test_streams_reproduce_and_differ_by_rank_and_batch():
    views = DeviceViews(seed=5)
    keys = ((0, 0), (0, 0), (1, 0), (0, 1))
    draw = [views.draw(8, PATCH, views.generator(rank, batch)).sigma for rank, batch in keys]
    assert torch.equal(draw[0], draw[1])
    assert not torch.equal(draw[0], draw[2]) and not torch.equal(draw[0], draw[3])
    assert not torch.equal(draw[0], DeviceViews(seed=6).draw(8, PATCH, DeviceViews(seed=6).generator()).sigma)


def worker_draws(count):
    """The worker pipeline's random parameters, drawn ``count`` times by its own transforms."""
    crop, flip, affine, intensity, histogram, smooth = view_augmentation(PATCH).set_random_state(0).transforms
    rows = []
    for _ in range(count):
        crop.randomize(PATCH)
        flip.randomize(None)
        affine.randomize()
        intensity.randomize()
        histogram.randomize()
        smooth.smooth.randomize()
        grid = affine.rand_affine_grid  # drawn only when the affine fires
        matrix = np.eye(3)
        if affine._do_transform:
            matrix = create_rotate(3, grid.rotate_params)[:3, :3] @ create_scale(3, grid.scale_params)[:3, :3]
        rows.append(
            {
                "start": [b.start for b in crop._box],
                "size": [b.stop - b.start for b in crop._box],
                "flip": flip._do_transform,
                "affine": affine._do_transform,
                "matrix": matrix,
                "intensity": intensity._do_transform,
                "factor": 1 + intensity.factor,
                "histogram": histogram._do_transform,
                "points": histogram.floating_control_points.copy(),
                "smooth": smooth.smooth._do_transform,
                "sigma": [smooth.smooth.x, smooth.smooth.y, smooth.smooth.z],
            }
        )
    return {key: np.array([row[key] for row in rows]) for key in rows[0]}


def assert_same_distribution(device, worker, name):
    p = ks_2samp(np.asarray(device).ravel(), np.asarray(worker).ravel()).pvalue
    assert p > 1e-3, f"{name}: device and worker draws differ (KS p = {p:.2g})"


def assert_same_rate(device, worker, name):
    rate, expected = float(np.mean(device)), float(np.mean(worker))
    assert abs(rate - expected) < 4 * np.sqrt(max(expected * (1 - expected), 1e-3) * 2 / len(device)), name


def test_every_parameter_is_drawn_as_the_worker_pipeline_draws_it():
    worker = worker_draws(DRAWS)
    device = DeviceViews().draw(DRAWS, PATCH, torch.Generator().manual_seed(0))
    for axis in range(3):
        assert_same_distribution(device.crop_size[:, axis], worker["size"][:, axis], f"crop size along {axis}")
        room = (torch.tensor(PATCH) - device.crop_size + 1)[:, axis].double()
        worker_room = np.array(PATCH)[axis] - worker["size"][:, axis] + 1
        assert_same_distribution(device.crop_start[:, axis] / room, worker["start"][:, axis] / worker_room, "start")
    for name, ours, theirs in [
        ("flip", device.flip, worker["flip"]),
        ("affine", (device.affine != torch.eye(3, dtype=torch.float64)).flatten(1).any(1), worker["affine"]),
        ("intensity", device.intensity != 1, worker["intensity"]),
        ("histogram", device.histogram, worker["histogram"]),
        ("smooth", device.smooth, worker["smooth"]),
    ]:
        assert_same_rate(ours.numpy(), theirs, f"{name} probability")
    fired = (device.affine != torch.eye(3, dtype=torch.float64)).flatten(1).any(1)
    for i, j in [(0, 0), (1, 1), (1, 2), (0, 2), (2, 0)]:
        assert_same_distribution(device.affine[fired, i, j], worker["matrix"][worker["affine"], i, j], f"affine {i}{j}")
    scaled = device.intensity != 1
    assert_same_distribution(device.intensity[scaled], worker["factor"][worker["intensity"]], "intensity factor")
    for k in range(1, 4):
        assert_same_distribution(device.control_points[:, k], worker["points"][:, k], f"control point {k}")
    for axis in range(3):
        assert_same_distribution(device.sigma[:, axis], worker["sigma"][:, axis], f"sigma along {axis}")


def test_view_statistics_match_the_worker_pipeline(patch):
    """Over many views of one CT patch: the same brightness, contrast and sharpness as the worker pipeline's."""
    count = 200
    augment = view_augmentation(PATCH).set_random_state(0)
    worker = torch.stack([torch.as_tensor(augment(patch)) for _ in range(count)])
    views = DeviceViews()
    device = views(patch.expand(1, count // 2, 1, *PATCH), views.generator()).flatten(0, 2)

    def statistics(batch):
        return {
            "mean": batch.mean(dim=(1, 2, 3, 4)),
            "std": batch.std(dim=(1, 2, 3, 4)),
            "edges": batch.diff(dim=-1).abs().mean(dim=(1, 2, 3, 4)),
        }

    ours, theirs = statistics(device), statistics(worker)
    for name in ours:
        mean, expected = float(ours[name].mean()), float(theirs[name].mean())
        assert abs(mean - expected) < 0.05 * expected, f"{name}: device {mean:.4f}, workers {expected:.4f}"
        spread, expected = float(ours[name].std()), float(theirs[name].std())
        assert abs(spread - expected) < 0.2 * expected, f"{name} spread: device {spread:.4f}, workers {expected:.4f}"


def test_contrastive_patches_are_the_raw_patches_of_the_volume():
    """What workers read for device views: the stored codes of each patch, padded with air (0) where too small."""
    volume = torch.from_numpy(quantise(torch.rand(1, 20, 40, 50).numpy()))
    patches = ContrastivePatches(PATCH, 4).set_random_state(3)(volume.numpy())
    assert patches.shape == (4, 1, *PATCH) and patches.dtype == torch.uint16
    reader = ContrastivePatches(PATCH, 4).set_random_state(3)
    reader.randomize(volume.shape[1:])
    for raw, start in zip(patches, reader._starts):
        box = tuple(slice(int(s), int(s) + p) for s, p in zip(start, PATCH))
        assert torch.equal(raw, volume[(slice(None), *box)])
    small = ContrastivePatches(PATCH, 2).set_random_state(0)(np.ones((1, 4, 20, 40), dtype=np.uint16))
    assert small.shape == (2, 1, *PATCH)
    small = small.int()
    assert small[:, :, :4, :20].min() == 1 and small[:, :, 4:].max() == 0 and small[..., 20:, :].max() == 0


def test_both_view_pipelines_default_to_the_one_set_of_view_settings():
    """The distribution tests compare the pipelines at their defaults: both must read them from VIEWS."""
    import dataclasses
    import inspect

    from ctfm.transforms.device_views import DeviceViews
    from ctfm.transforms.view_settings import VIEWS
    from ctfm.transforms.views import view_augmentation

    expected = dataclasses.asdict(VIEWS)
    for function in (view_augmentation, DeviceViews.__init__):
        defaults = {
            name: parameter.default
            for name, parameter in inspect.signature(function).parameters.items()
            if name in expected
        }
        assert defaults == expected, function.__qualname__
