"""read_ct and CTPreprocessing on valid scans (NIfTI and DICOM) and on every kind of bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from pydicom.data import get_testdata_file

from ctfm.data.sample import generate_ct, write_dicom_series, write_nifti
from ctfm.errors import InvalidScanError
from ctfm.io.reader import read_ct
from ctfm.transforms.preprocess import HU_RANGE, PATCH_SIZE, CTPreprocessing


def voxel_to_world(affine: torch.Tensor | np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    return (np.asarray(affine, dtype=np.float64) @ np.array([*index, 1.0]))[:3]


def test_nifti_and_dicom_read_to_the_same_hu_and_geometry(sample_ct, sample_nifti, sample_dicom_dir):
    from_nifti, from_dicom = read_ct(sample_nifti), read_ct(sample_dicom_dir)
    expected = sample_ct.hu.transpose(2, 1, 0)[None].astype(np.float32)  # read_ct keeps index order (x, y, z)
    for volume in (from_nifti, from_dicom):
        assert volume.dtype == torch.float32 and tuple(volume.shape) == (1, 96, 96, 32)
        np.testing.assert_array_equal(volume.numpy(), expected)
        for index in ((0, 0, 0), (3, 40, 77), (31, 95, 95)):
            np.testing.assert_allclose(
                voxel_to_world(volume.affine, index[::-1]), voxel_to_world(sample_ct.affine, index), atol=1e-4
            )
    assert from_nifti.meta["filename_or_obj"] == str(sample_nifti)


def test_real_dicom_series_reads_in_hu(tmp_path):
    folder = tmp_path / "CT5N"
    shutil.copytree(Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N", folder)
    volume = read_ct(folder)
    assert tuple(volume.shape) == (1, 16, 16, 5)
    assert float(volume.min()) == -888 and float(volume.max()) == 85
    np.testing.assert_allclose(np.linalg.norm(volume.affine[:3, :3].numpy(), axis=0), (0.488281, 0.488281, 2.5))


def test_preprocessing_gives_spl_3x1x1_mm_in_unit_range(sample_nifti, sample_dicom_dir):
    volume = CTPreprocessing()(sample_nifti)
    affine = volume.affine.numpy()
    assert nib.aff2axcodes(affine) == ("S", "P", "L")
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), (3.0, 1.0, 1.0), atol=1e-6)
    assert volume.dtype == torch.float32 and volume.shape[0] == 1
    assert all(n >= p for n, p in zip(volume.shape[1:], PATCH_SIZE, strict=True))
    assert volume.shape[1] == round(32 * 2.5 / 3)  # 80 mm of slices at 3 mm
    assert float(volume.min()) == 0.0 and 0.3 < float(volume.max()) <= 1.0
    from_dicom = CTPreprocessing()(sample_dicom_dir)
    torch.testing.assert_close(from_dicom.as_tensor(), volume.as_tensor())
    torch.testing.assert_close(from_dicom.affine, volume.affine)


def test_native_spacing_preprocessing_reproduces_the_sample_voxel_for_voxel(sample_ct, sample_nifti):
    volume = CTPreprocessing(spacing=None, crop_foreground=False, min_size=(1, 1, 1))(sample_nifti)
    low, high = HU_RANGE
    expected = np.clip((sample_ct.hu.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    np.testing.assert_allclose(volume[0].numpy(), expected, atol=1e-6)  # SPL orientation == the sample's (z, y, x)
    np.testing.assert_allclose(volume.affine.numpy(), sample_ct.affine, atol=1e-4)


def test_foreground_crop_removes_air_but_keeps_the_body(sample_nifti):
    settings = CTPreprocessing(min_size=(1, 1, 1))
    cropped = settings(sample_nifti)[0].numpy()
    whole = CTPreprocessing(crop_foreground=False, min_size=(1, 1, 1))(sample_nifti)[0].numpy()
    body = settings.body_threshold
    assert cropped.shape[1] < whole.shape[1] and cropped.shape[2] < whole.shape[2]
    assert (cropped > body).sum() == (whole > body).sum()
    for axis in range(3):  # every face of the crop touches the body
        assert (np.take(cropped, 0, axis=axis) > body).any() and (np.take(cropped, -1, axis=axis) > body).any()


def test_a_volume_smaller_than_a_patch_is_padded_with_air(tmp_path):
    small = write_nifti(generate_ct((8, 40, 40), seed=1), tmp_path / "small.nii.gz")
    volume = CTPreprocessing()(small)[0]
    assert tuple(volume.shape) == PATCH_SIZE
    assert float(volume[0, 0, 0]) == 0.0 and float(volume[-1, -1, -1]) == 0.0
    assert float(volume.max()) > 0.3  # the body is still there


def _real_nifti(tmp_path: Path, name: str) -> Path:
    return write_nifti(generate_ct((8, 32, 32)), tmp_path / name)


def _corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _truncated(tmp_path: Path, name: str) -> Path:
    """The first half of a real file, as an interrupted copy leaves it."""
    data = _real_nifti(tmp_path, "whole_" + name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: len(data) // 2])
    return path


def _flat(tmp_path: Path) -> Path:
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(generate_ct((8, 32, 32)).hu[4]), str(path))
    return path


def _float_volume(tmp_path: Path, name: str, change) -> Path:
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(change(generate_ct((8, 32, 32)).hu.astype(np.float32))), str(path))
    return path


def _one_nan(values: np.ndarray) -> np.ndarray:
    values[3, 10, 20] = np.nan
    return values


def _without_intercept(values: np.ndarray) -> np.ndarray:
    """12-bit stored values as a scanner writes them before RescaleIntercept -1024, with a saturated implant."""
    stored = np.clip(values + 1024, 0, 4095)
    stored[4, 10:14, 10:14] = 4095
    return stored


BAD_INPUTS = {
    "corrupt": (_corrupt, "cannot be read as NIfTI"),
    "truncated-gz": (lambda tmp: _truncated(tmp, "cut.nii.gz"), "cannot be read as NIfTI .*end-of-stream marker"),
    "truncated-raw": (lambda tmp: _truncated(tmp, "cut.nii"), "cannot be read as NIfTI .*Expected 16384 bytes"),
    "2d": (_flat, "is 2D"),
    "mr": (lambda tmp: write_dicom_series(generate_ct((8, 32, 32)), tmp / "mr", modality="MR"), "'MR', not CT"),
    "nan": (lambda tmp: _float_volume(tmp, "nan.nii.gz", _one_nan), "contains 1 non-finite voxels"),
    "inf": (lambda tmp: _float_volume(tmp, "inf.nrrd", lambda v: np.where(v > 600, np.inf, v)), "non-finite"),
    "normalised": (
        lambda tmp: _float_volume(tmp, "scaled.nii.gz", lambda v: np.clip((v + 1024) / 3072, 0, 1)),
        r"intensities lie in \[0, 0\.\d+\]: normalised already, not Hounsfield units",
    ),
    "no-intercept": (
        lambda tmp: _float_volume(tmp, "stored.nrrd", _without_intercept),
        "stored values without their rescale intercept",
    ),
    "missing": (lambda tmp: tmp / "no_such_scan.nii.gz", "no such file or directory"),
}


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_raises_an_error_naming_the_file(tmp_path, kind):
    make, problem = BAD_INPUTS[kind]
    path = make(tmp_path)
    for read in (read_ct, CTPreprocessing()):
        with pytest.raises(InvalidScanError, match=problem) as caught:
            read(path)
        assert str(caught.value).startswith(f"{path}: ")
        assert caught.value.path == str(path)


def test_the_hu_check_can_be_switched_off_for_normalised_volumes(tmp_path):
    path = _float_volume(tmp_path, "scaled.nii.gz", lambda v: np.clip((v + 1024) / 3072, 0, 1))
    volume = read_ct(path, check_hu=False)
    assert 0.0 <= float(volume.min()) and float(volume.max()) <= 1.0


def _brain_template(tmp_path: Path) -> Path:
    """Like a public brain CT template: int16, background 0, brain about 40 HU, bone up to 385, minimum -30."""
    hu = generate_ct((24, 48, 48)).hu.astype(np.float32)
    template = np.where(hu > -100, np.clip(hu, -30, 385), 0).astype(np.int16)
    path = tmp_path / "template.nii.gz"
    nib.save(nib.Nifti1Image(template.transpose(2, 1, 0), np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return path


def test_hu_without_air_passes_with_a_warning_naming_the_file(tmp_path, caplog):
    path = _brain_template(tmp_path)
    with caplog.at_level("WARNING", logger="ctfm.io.reader"):
        volume = read_ct(path)
    assert float(volume.min()) == -30.0 and float(volume.max()) == 385.0
    assert str(path) in caplog.text and "no air" in caplog.text


def test_hu_without_air_embeds(tmp_path):
    import ctfm
    from ctfm.nn import ct_fm_encoder

    vector = ctfm.embed(ct_fm_encoder(init_filters=4), _brain_template(tmp_path), patch_size=(8, 32, 32))
    assert vector.shape == (64,) and torch.isfinite(vector).all()
