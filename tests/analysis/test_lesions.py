"""Lesion crops: a lesion at a known LPS position is at the centre of its crop, whatever the file's direction."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ctfm.analysis.lesions import (
    SeedOutsideScanError,
    crop_prepared,
    lesion_crop,
    prepare_grid,
    prepare_scan,
    to_ras,
)
from ctfm.transforms.lesion_crop import CT_FM_CROP, FMCIB_CROP

#: Voxel (z, y, x) of the lesion in the sample scan, off-centre in every axis so a mirrored crop misses it.
LESION_VOXEL = (20, 30, 64)


def scan_with_lesion(sample_ct, direction=None):
    """A SimpleITK image of the sample with a 6 mm, 400 HU sphere at LESION_VOXEL; and the lesion's LPS point."""
    hu = sample_ct.hu.copy()
    z, y, x = np.ogrid[: hu.shape[0], : hu.shape[1], : hu.shape[2]]
    sz, sy, sx = sample_ct.spacing
    lz, ly, lx = LESION_VOXEL
    hu[((z - lz) * sz) ** 2 + ((y - ly) * sy) ** 2 + ((x - lx) * sx) ** 2 <= 6.0**2] = 400
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((sx, sy, sz))
    image.SetOrigin(sample_ct.origin)
    if direction is not None:
        image.SetDirection(direction)
    point = image.TransformIndexToPhysicalPoint((lx, ly, lz))  # ITK: LPS mm of index (x, y, z)
    return image, point


def centre_value(crop):
    c = [s // 2 for s in crop.shape[1:]]
    return float(crop[0, c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2].mean())


@pytest.mark.parametrize(
    ("suffix", "direction"),
    [(".nii.gz", None), (".nrrd", (-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))],
    ids=["nifti-identity", "nrrd-rotated"],
)
def test_lesion_at_known_lps_point_is_at_the_crop_centre(sample_ct, tmp_path, suffix, direction):
    image, point = scan_with_lesion(sample_ct, direction)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(image, str(path))
    crop = lesion_crop(path, point)
    assert tuple(crop.shape) == (1, 50, 50, 50)
    assert centre_value(crop) == pytest.approx(400, abs=30)  # in HU
    # The crop's affine maps its centre voxel to the seed (RAS = LPS with x and y negated), within half a voxel.
    centre = crop.affine.numpy() @ np.array([25, 25, 25, 1.0])
    assert np.allclose(centre[:3], [-point[0], -point[1], point[2]], atol=0.5 + 1e-6)
    # Reading the point as RAS (the classic bug) misses the lesion, or leaves the scan.
    try:
        assert centre_value(lesion_crop(path, point, coords="RAS")) < 200
    except SeedOutsideScanError:
        assert direction is not None
    ct_fm = lesion_crop(path, point, size=CT_FM_CROP.size, spacing=CT_FM_CROP.spacing, orientation="SPL")
    assert tuple(ct_fm.shape) == (1, 24, 128, 128) and centre_value(ct_fm) == pytest.approx(400, abs=60)


def test_dicom_series_with_known_lps_point(sample_ct, tmp_path):
    from ctfm.data.sample import write_dicom_series

    image, point = scan_with_lesion(sample_ct)
    lesion = type(sample_ct)(
        hu=sitk.GetArrayFromImage(image),
        labels=sample_ct.labels,
        spacing=sample_ct.spacing,
        origin=sample_ct.origin,
        seed=sample_ct.seed,
    )
    folder = write_dicom_series(lesion, tmp_path / "series")
    assert centre_value(lesion_crop(folder, point)) == pytest.approx(400, abs=30)


def test_crop_beyond_the_edge_is_air_and_outside_is_an_error(sample_ct, tmp_path):
    image, _ = scan_with_lesion(sample_ct)
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(image, str(path))
    corner = image.TransformIndexToPhysicalPoint((0, 0, 0))
    crop = lesion_crop(path, corner)
    assert tuple(crop.shape) == (1, 50, 50, 50) and float(crop[0, 0, 0, 0]) == -1024.0
    with pytest.raises(SeedOutsideScanError, match=r"scan.nii.gz: seed point .* outside the scan"):
        lesion_crop(path, (corner[0] - 50.0, corner[1], corner[2]))


def test_normalisations():
    hu = torch.tensor([-2000.0, -1024.0, 2048.0, 3000.0])
    assert FMCIB_CROP.normalise(hu).tolist() == pytest.approx([(-2000 + 1024) / 3072, 0.0, 1.0, 4024 / 3072])
    assert CT_FM_CROP.normalise(hu).tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("crop", [FMCIB_CROP, CT_FM_CROP], ids=["fmcib", "ct-fm"])
def test_grid_crops_equal_crops_of_the_whole_resampled_scan(sample_ct, tmp_path, crop):
    image, lesion = scan_with_lesion(sample_ct, direction=(-1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(image, str(path))
    whole = prepare_scan(path, crop.orientation, crop.spacing)
    grid = prepare_grid(path, crop.orientation, crop.spacing)
    assert grid.shape == tuple(whole.shape[1:]) and np.allclose(grid.affine, whole.affine.numpy())
    corner = image.TransformIndexToPhysicalPoint((1, 2, 0))  # most of its crop lies beyond the scan: air
    for point in (lesion, corner):
        expected = crop_prepared(whole, to_ras(point), crop.size)
        got = grid.crop(to_ras(point), crop.size)
        assert tuple(got.shape) == (1, *crop.size)
        assert torch.allclose(got.as_tensor(), expected.as_tensor(), atol=1e-3)
        assert np.allclose(got.affine.numpy(), expected.affine.numpy())  # the seed's voxel is the centre in both
    assert centre_value(grid.crop(to_ras(lesion), crop.size)) > 300  # the lesion, not its mirror image
    with pytest.raises(SeedOutsideScanError, match="outside the scan"):
        grid.crop(to_ras((corner[0] + 1000.0, corner[1], corner[2])), crop.size)
