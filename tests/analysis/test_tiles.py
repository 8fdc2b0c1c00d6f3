"""Tile plumbing: resampling heat maps onto a scan's grid, and the bounded cache of target volumes."""

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from ctfm.analysis.tiles import TargetCache, _resample_general, _spread_each, aggregate_tiles, resample_to_grid
from ctfm.embedding import PatchEmbeddings, patch_starts
from ctfm.nn import ct_fm_encoder
from ctfm.transforms.preprocess import CTPreprocessing

VALUES_AFFINE = np.array([[3.0, 0, 0, -5], [0, 1.2, 0, 10], [0, 0, 0.9, 3], [0, 0, 0, 1]])


def grid(affine: np.ndarray, shape=(13, 17, 30)) -> MetaTensor:
    return MetaTensor(torch.zeros(1, *shape), affine=torch.as_tensor(affine))


@pytest.mark.parametrize("fill", [None, np.nan, -2.0], ids=["edge", "nan", "constant"])
def test_axis_by_axis_resampling_equals_scipy_on_a_permuted_flipped_grid(fill):
    """Each grid axis maps to another values axis, two of them flipped, partly outside the values."""
    values = np.random.default_rng(0).normal(size=(2, 7, 9, 11)).astype(np.float32)
    affine = np.array([[0, 0, -0.8, 12], [1.7, 0, 0, -8], [0, 0.5, 0, 1], [0, 0, 0, 1]])
    fast = resample_to_grid(values, VALUES_AFFINE, grid(affine), fill=fill)
    reference = _resample_general(values, np.linalg.inv(VALUES_AFFINE) @ affine, (13, 17, 30), fill)
    assert fast.shape == (2, 13, 17, 30)
    np.testing.assert_allclose(fast, reference, atol=1e-5, equal_nan=True)
    if fill is not None:
        assert np.isclose(fast, fill, equal_nan=True).any()  # some grid voxels lie outside the values


def test_an_oblique_grid_is_sampled_voxel_by_voxel():
    values = np.random.default_rng(1).normal(size=(7, 9, 11)).astype(np.float32)
    turn = np.cos(0.3), np.sin(0.3)
    affine = np.array([[turn[0], -turn[1], 0, 0], [turn[1], turn[0], 0, 2], [0, 0, 1, 4], [0, 0, 0, 1]])
    out = resample_to_grid(values, VALUES_AFFINE, grid(affine, (5, 6, 7)))
    reference = _resample_general(values[None], np.linalg.inv(VALUES_AFFINE) @ affine, (5, 6, 7), None)[0]
    np.testing.assert_array_equal(out, reference)


def test_identity_resampling_returns_the_values():
    values = np.random.default_rng(2).normal(size=(4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(resample_to_grid(values, VALUES_AFFINE, grid(VALUES_AFFINE, (4, 5, 6))), values)


@pytest.mark.parametrize("how", ["mean", "max"])
def test_tiles_on_a_grid_spread_axis_by_axis_as_one_at_a_time(how):
    """patch_starts' tiling (the last tile on each axis shifted inside) is a grid; the per-axis spreading must give
    what adding each tile's value over its voxels gives, and an irregular set must still work."""
    shape, size = (30, 50, 47), (8, 16, 16)
    starts = np.array(patch_starts(shape, size, 0.5))
    values = np.random.default_rng(3).normal(size=(len(starts), 3))
    for corners in (starts, starts[:-1]):  # a grid, then one tile missing: not a grid
        centres = torch.tensor(corners + (np.array(size) - 1) / 2)
        patches = PatchEmbeddings(torch.zeros(len(corners), 4), centres, centres, size)
        spread = aggregate_tiles(patches, values[: len(corners)], shape, how)
        total, count = _spread_each(corners, np.array(size), values[: len(corners)], shape, how)
        expected = total / np.maximum(count, 1) if how == "mean" else total
        expected[:, count == 0] = values[: len(corners)].min(axis=0)[:, None]  # uncovered: each channel's minimum
        np.testing.assert_allclose(spread, expected, rtol=1e-6)
        assert spread.shape == (3, *shape)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_nearest_tile_paints_every_voxel_with_the_tile_centred_nearest(overlap):
    """Against a brute-force search over all tile centres, on a grid and on an irregular set of tiles; every
    voxel is painted, and on patch_starts' grid each lies inside the tile that painted it."""
    from ctfm.analysis.tiles import nearest_tile

    shape, size = (14, 23, 21), (4, 8, 8)
    starts = np.array(patch_starts(shape, size, overlap))
    values = np.random.default_rng(1).normal(size=(len(starts), 2))
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).reshape(-1, 3)
    for corners in (starts, starts[:-1]):  # a grid, then one tile missing (a hole no tile covers)
        centres = corners + (np.array(size) - 1) / 2
        patches = PatchEmbeddings(torch.zeros(len(corners), 4), torch.tensor(centres), torch.tensor(centres), size)
        painted = nearest_tile(patches, values[: len(corners)], shape)
        assert painted.shape == (*shape, 2) and np.isfinite(painted).all()
        distance = ((grid[:, None, :] - centres[None]) ** 2).sum(axis=2)
        best = distance.min(axis=1)
        chosen = np.array([np.flatnonzero(np.all(values[: len(corners)] == v, axis=1))[0]
                           for v in painted.reshape(-1, 2)])  # fmt: skip
        np.testing.assert_allclose(distance[np.arange(len(grid)), chosen], best)  # a nearest centre (ties allowed)
        inside = (grid >= corners[chosen]) & (grid < corners[chosen] + np.array(size))
        assert inside.all() or len(corners) < len(starts)


def test_volumes_are_read_once_and_the_least_recent_leaves_when_over_budget(sample_nifti, tmp_path):
    image = nib.load(sample_nifti)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"t{i}.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:48, :48], image.affine), paths[-1])
    model = ct_fm_encoder(init_filters=4).eval()
    one = TargetCache(model, CTPreprocessing(), (8, 32, 32), 0.5)
    scan, volume = one.load(paths[0])
    size = sum(a.element_size() * a.nelement() for a in (scan, volume))
    assert one.load(paths[0])[0] is scan and one.read == 1
    # Room for two targets: the third pushes out the least recently used (t1, since t0 was used again).
    cache = TargetCache(model, CTPreprocessing(), (8, 32, 32), 0.5, max_volume_bytes=int(2.5 * size))
    for path in (paths[0], paths[1], paths[0], paths[2]):
        cache.load(path)
    assert cache.read == 3 and [cache.key(p) for p in (paths[0], paths[2])] == list(cache.volumes)
    cache.load(paths[1])
    assert cache.read == 4
