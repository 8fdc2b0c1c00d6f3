"""DICOM series checks and reading, on synthetic series and on the real CT series that ship with pydicom."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from ctfm.data.sample import generate_ct, write_dicom_series
from ctfm.errors import InvalidScanError
from ctfm.io.dicom import check_dicom_series, read_dicom_series

PYDICOM_DATA = Path(get_testdata_file("CT_small.dcm")).parent
CHEST_CT = "dicomdirtests/98892001/CT5N"  # a real 5-slice chest CT, 16 x 16, 2.5 mm apart
GAPPED_HEAD_CT = "dicomdirtests/77654033/CT2"  # slice gaps of 202.5, 1.25 and 1.25 mm
SCOUTS = "dicomdirtests/98892001/CT2N"  # two LOCALIZER images


def copy_series(destination: Path, *sources: str) -> Path:
    """Copy pydicom's test series into one folder of our own (the package's copy must stay untouched)."""
    destination.mkdir(parents=True, exist_ok=True)
    for source in sources:
        for path in (PYDICOM_DATA / source).iterdir():
            shutil.copy(path, destination / path.name)
    return destination


@pytest.fixture
def small_series(tmp_path) -> Path:
    """A fresh 8-slice synthetic series each test may damage."""
    return write_dicom_series(generate_ct((8, 24, 24), (2.0, 0.7, 0.7), seed=11), tmp_path / "series")


def edit(path: Path, **tags) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def test_synthetic_series_summary(sample_ct, sample_dicom_dir):
    info = check_dicom_series(sample_dicom_dir)
    first = pydicom.dcmread(next(sample_dicom_dir.glob("*.dcm")), stop_before_pixels=True)
    assert info.modality == "CT" and info.n_slices == 32 and (info.rows, info.columns) == (96, 96)
    assert info.series_instance_uid == first.SeriesInstanceUID and info.study_instance_uid == first.StudyInstanceUID
    assert info.image_type == ("ORIGINAL", "PRIMARY", "AXIAL") and info.manufacturer == "ctfm synthetic"
    np.testing.assert_allclose(info.spacing, sample_ct.spacing)
    assert info.slice_thickness == 2.5
    positions = [float(pydicom.dcmread(path).ImagePositionPatient[2]) for path in info.files]
    assert positions == sorted(positions)  # along the slice normal, whatever the file names say
    sidecar = json.loads(json.dumps(info.as_dict()))
    assert "files" not in sidecar and sidecar["series_instance_uid"] == info.series_instance_uid


def test_synthetic_series_reads_in_hu_with_its_geometry(sample_ct, sample_dicom_dir):
    image = read_dicom_series(sample_dicom_dir)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sample_ct.hu)
    np.testing.assert_allclose(image.GetSpacing(), sample_ct.spacing[::-1])
    np.testing.assert_allclose(image.GetOrigin(), sample_ct.origin)
    np.testing.assert_allclose(image.GetDirection(), np.eye(3).ravel())


def test_signed_and_unsigned_storage_give_the_same_hu(tmp_path):
    sample = generate_ct((8, 24, 24), seed=12)
    for signed in (False, True):
        folder = write_dicom_series(sample, tmp_path / str(signed), signed=signed)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_dicom_series(folder)), sample.hu)


def test_real_chest_ct_reads_in_hu_in_position_order(tmp_path):
    folder = copy_series(tmp_path / "chest", CHEST_CT)
    info = check_dicom_series(folder)
    volume = sitk.GetArrayFromImage(read_dicom_series(folder))
    assert volume.shape == (5, 16, 16) and info.n_slices == 5
    np.testing.assert_allclose(info.spacing, (2.5, 0.488281, 0.488281), rtol=1e-5)
    expected = []
    for path in info.files:
        ds = pydicom.dcmread(path)
        expected.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    np.testing.assert_array_equal(volume, np.stack(expected))
    assert volume.min() == -888 and volume.max() == 85


def test_a_stray_non_dicom_file_is_ignored(small_series):
    (small_series / "series.json").write_text('{"note": "a sidecar"}')
    (small_series / "README").write_text("not DICOM")
    assert check_dicom_series(small_series).n_slices == 8


@pytest.mark.parametrize(
    ("sources", "problem"),
    [
        ((GAPPED_HEAD_CT,), r"non-uniform slice spacing .*202\.5 mm between"),
        ((SCOUTS,), "2 of 2 files are LOCALIZER"),
        ((CHEST_CT, GAPPED_HEAD_CT), r"mixes 2 series .*\(5 files\).*\(4 files\)"),
    ],
    ids=["gaps", "localizer", "two-series"],
)
def test_real_reject_cases(tmp_path, sources, problem):
    folder = copy_series(tmp_path / "series", *sources)
    with pytest.raises(InvalidScanError, match=problem) as caught:
        read_dicom_series(folder)
    assert str(caught.value).startswith(str(folder))


def test_a_single_slice_is_not_a_volume(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(PYDICOM_DATA / "CT_small.dcm", folder)
    with pytest.raises(InvalidScanError, match="has 1 slice; a 3D volume needs at least 2"):
        check_dicom_series(folder)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidScanError, match="contains no DICOM files$"):
        check_dicom_series(tmp_path / "empty")
    (tmp_path / "study" / "series").mkdir(parents=True)
    with pytest.raises(InvalidScanError, match="1 sub-folders: pass one series folder"):
        check_dicom_series(tmp_path / "study")
    with pytest.raises(InvalidScanError, match="no such folder"):
        check_dicom_series(tmp_path / "missing")


def test_non_ct_modality(tmp_path):
    folder = write_dicom_series(generate_ct((8, 24, 24), seed=1), tmp_path / "mr", modality="MR")
    with pytest.raises(InvalidScanError, match="modality is 'MR', not CT"):
        check_dicom_series(folder)


def test_duplicated_slice_positions(small_series):
    copy = small_series / "copy.dcm"
    shutil.copy(small_series / "IM0003.dcm", copy)
    edit(copy, SOPInstanceUID=generate_uid())
    with pytest.raises(InvalidScanError, match=r"1 duplicated slice position: .*IM0003\.dcm"):
        check_dicom_series(small_series)


def test_a_missing_slice_is_reported_as_a_gap(small_series):
    (small_series / "IM0004.dcm").unlink()
    with pytest.raises(InvalidScanError, match=r"typical gap 2 mm\): 4 mm between .*about 1 missing slice$"):
        check_dicom_series(small_series)


@pytest.mark.parametrize(
    ("tags", "problem"),
    [
        (
            {"PixelSpacing": [0.8, 0.8]},
            r"mixes 2 pixel spacings: \[0\.7, 0\.7\] \(7 files\), \[0\.8, 0\.8\] \(1 file\)",
        ),
        ({"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}, "mixes 2 slice orientations"),
        ({"Rows": 32}, r"mixes 2 image heights \(Rows\)"),
    ],
    ids=["pixel-spacing", "orientation", "rows"],
)
def test_mixed_in_plane_geometry(small_series, tags, problem):
    edit(small_series / "IM0005.dcm", **tags)
    with pytest.raises(InvalidScanError, match=problem):
        check_dicom_series(small_series)


def test_a_slice_cut_inside_its_header_is_reported(small_series):
    damaged = small_series / "IM0006.dcm"
    damaged.write_bytes(damaged.read_bytes()[:300])
    with pytest.raises(InvalidScanError, match=r"1 file without SeriesInstanceUID .*: IM0006\.dcm"):
        check_dicom_series(small_series)


def test_a_truncated_slice_names_the_file(small_series):
    damaged = small_series / "IM0006.dcm"
    damaged.write_bytes(damaged.read_bytes()[:-500])
    with pytest.raises(InvalidScanError, match=r"IM0006\.dcm cannot be read"):
        read_dicom_series(small_series)
