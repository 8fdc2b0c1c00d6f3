"""The synthetic CT generator: determinism, anatomy, Hounsfield values and the files it writes."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import CTImageStorage

from ctfm.data.sample import (
    DEFAULT_SHAPE,
    LABEL,
    TISSUES,
    generate_ct,
    make_sample_dataset,
    write_dicom_series,
    write_labels_nifti,
)

SMALL = (16, 48, 48)


def world(affine: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


def test_same_seed_gives_the_same_volume_and_other_seeds_other_anatomy():
    first, again, other = generate_ct(SMALL, seed=3), generate_ct(SMALL, seed=3), generate_ct(SMALL, seed=4)
    np.testing.assert_array_equal(first.hu, again.hu)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert (first.labels != other.labels).mean() > 0.05
    volumes = [np.bincount(generate_ct(SMALL, seed=seed).labels.ravel(), minlength=len(TISSUES)) for seed in range(4)]
    assert len({tuple(v) for v in volumes}) == 4  # organ sizes change with the seed


def test_arrays_and_geometry(sample_ct):
    assert sample_ct.hu.dtype == np.int16 and sample_ct.labels.dtype == np.uint8
    assert sample_ct.hu.shape == sample_ct.labels.shape == sample_ct.shape == (32, 96, 96)
    affine = sample_ct.affine
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), sample_ct.spacing)
    assert nib.aff2axcodes(affine) == ("S", "P", "L")  # the array is already in pretraining orientation
    ox, oy, oz = sample_ct.origin
    np.testing.assert_allclose(world(affine, (0, 0, 0)), [-ox, -oy, oz])  # LPS origin, RAS affine
    np.testing.assert_allclose(world(affine, (31, 95, 95)), -world(affine, (0, 0, 0)))  # centred on the isocentre


def test_every_tissue_is_present_with_plausible_hounsfield_units(sample_ct):
    expected = {
        "air": (-1010, -990),
        "fat": (-120, -80),
        "muscle": (30, 50),
        "lung": (-900, -800),
        "lung_vessel": (10, 50),
        "liver": (50, 70),
        "spleen": (35, 55),
        "kidney": (20, 40),
        "heart": (30, 50),
        "blood": (40, 60),
        "bone": (450, 800),
        "disc": (60, 100),
        "spinal_cord": (10, 30),
    }
    assert set(expected) == set(TISSUES.values())
    for name, (low, high) in expected.items():
        voxels = sample_ct.hu[sample_ct.labels == LABEL[name]]
        assert voxels.size, f"no {name} in the sample"
        assert low <= np.median(voxels) <= high, f"{name}: median {np.median(voxels)} HU"
    air = sample_ct.hu[sample_ct.labels == LABEL["air"]].astype(float)
    assert 8 <= air[air > -1024].std() <= 25  # scanner-like noise, not a flat phantom
    cortical = sample_ct.hu[sample_ct.labels == LABEL["bone"]]
    assert cortical.max() - cortical.min() > 300  # dense rim, spongy core


def test_anatomy_changes_along_z_lungs_up_abdomen_down(sample_ct):
    labels = sample_ct.labels
    z_of = {name: np.nonzero(labels == LABEL[name])[0] for name in ("lung", "heart", "liver", "kidney")}
    assert z_of["lung"].mean() > z_of["heart"].mean() > z_of["kidney"].mean()
    assert z_of["lung"].mean() > z_of["liver"].mean() > z_of["kidney"].mean()
    top, bottom = labels[-4:], labels[:4]
    assert (top == LABEL["lung"]).mean() > 0.03 and not (bottom == LABEL["lung"]).any()
    assert (bottom == LABEL["kidney"]).any() and not (top == LABEL["kidney"]).any()


def test_left_right_and_front_back_layout(sample_ct):
    labels = sample_ct.labels
    middle = labels.shape[2] / 2  # x grows towards the patient's left
    lung_x = np.nonzero(labels == LABEL["lung"])[2]
    assert (lung_x < middle).mean() > 0.3 and (lung_x > middle).mean() > 0.3
    assert np.nonzero(labels == LABEL["liver"])[2].mean() < middle < np.nonzero(labels == LABEL["spleen"])[2].mean()
    # y grows towards the back: the spine lies behind the heart.
    assert np.nonzero(labels == LABEL["spinal_cord"])[1].mean() > np.nonzero(labels == LABEL["heart"])[1].mean()


def test_vertebrae_and_discs_alternate_along_the_spine(sample_ct):
    cord = np.argwhere(sample_ct.labels == LABEL["spinal_cord"])
    front, x = int(cord[:, 1].min()), int(np.median(cord[:, 2]))
    column = sample_ct.labels[:, front - 10 : front, x]  # just in front of the cord: the vertebral bodies
    is_disc = (column == LABEL["disc"]).any(axis=1)
    assert is_disc.any() and (column == LABEL["bone"]).any(axis=1).any()
    assert np.count_nonzero(np.diff(is_disc.astype(int))) >= 3


def test_invalid_geometry_is_refused():
    with pytest.raises(ValueError, match="shape"):
        generate_ct((4, 64, 64))
    with pytest.raises(ValueError, match="spacing"):
        generate_ct(SMALL, spacing=(2.5, 0.0, 1.0))


def test_default_shape_is_small_but_holds_a_pretraining_patch():
    sample = generate_ct(seed=1)
    assert sample.shape == DEFAULT_SHAPE
    extent_mm = np.array(sample.shape) * np.array(sample.spacing)
    assert np.all(extent_mm >= (72.0, 128.0, 128.0))  # one 24 x 128 x 128 patch at 3 x 1 x 1 mm


def test_nifti_files_keep_hu_labels_and_world_coordinates(sample_ct, sample_nifti, tmp_path):
    image = nib.load(sample_nifti)
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), sample_ct.hu)
    for index in ((0, 0, 0), (5, 17, 80), (31, 95, 95)):
        np.testing.assert_allclose(world(image.affine, index[::-1]), world(sample_ct.affine, index), atol=1e-4)

    labels = nib.load(write_labels_nifti(sample_ct, tmp_path / "labels.nii.gz"))
    assert labels.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(labels.dataobj).transpose(2, 1, 0), sample_ct.labels)
    np.testing.assert_allclose(labels.affine, image.affine)


def test_dicom_series_tags_and_pixels(sample_ct, sample_dicom_dir):
    files = sorted(sample_dicom_dir.glob("*.dcm"))
    assert len(files) == sample_ct.shape[0]
    headers = [pydicom.dcmread(path) for path in files]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({ds[key].value for ds in headers}) == 1
    assert len({ds.SOPInstanceUID for ds in headers}) == len(files)
    sz, sy, sx = sample_ct.spacing
    for ds in headers:
        assert ds.SOPClassUID == CTImageStorage and ds.file_meta.MediaStorageSOPClassUID == CTImageStorage
        assert ds.Modality == "CT" and list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
        assert [float(v) for v in ds.PixelSpacing] == [sy, sx] and float(ds.SliceThickness) == sz
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) == -1024
        z = round((float(ds.ImagePositionPatient[2]) - sample_ct.origin[2]) / sz)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, sample_ct.hu[z])
    top = max(headers, key=lambda ds: float(ds.ImagePositionPatient[2]))
    assert top.InstanceNumber == 1  # numbered head first, as scanners do


def test_signed_dicom_storage_and_stable_uids(tmp_path):
    sample = generate_ct(SMALL, seed=2)
    signed = write_dicom_series(sample, tmp_path / "signed", signed=True)
    unsigned = write_dicom_series(sample, tmp_path / "unsigned")
    custom = write_dicom_series(sample, tmp_path / "custom", series_uid="1.2.3.4")
    first = {
        name: pydicom.dcmread(folder / "IM0001.dcm")
        for name, folder in (("signed", signed), ("unsigned", unsigned), ("custom", custom))
    }
    assert first["signed"].PixelRepresentation == 1 and float(first["signed"].RescaleIntercept) == 0
    np.testing.assert_array_equal(first["signed"].pixel_array, sample.hu[-1])
    assert first["signed"].SeriesInstanceUID == first["unsigned"].SeriesInstanceUID  # derived from the seed
    assert first["custom"].SeriesInstanceUID == "1.2.3.4"


def test_sample_dataset_writes_scans_labels_and_a_relative_datalist(tmp_path):
    csv_path = make_sample_dataset(tmp_path / "data", n_scans=2, shape=SMALL, seed=5)
    table = pd.read_csv(csv_path)
    assert list(table.columns) == ["image", "label", "seed"] and len(table) == 2
    assert table["seed"].nunique() == 2
    images = []
    for row in table.itertuples():
        assert not row.image.startswith("/")
        image, labels = nib.load(csv_path.parent / row.image), nib.load(csv_path.parent / row.label)
        assert image.shape == labels.shape == SMALL[::-1]
        np.testing.assert_allclose(image.affine, labels.affine)
        images.append(np.asarray(image.dataobj))
        expected = generate_ct(SMALL, seed=int(row.seed))
        np.testing.assert_array_equal(images[-1].transpose(2, 1, 0), expected.hu)
    assert not np.array_equal(images[0], images[1])
    with pytest.raises(ValueError, match="n_scans"):
        make_sample_dataset(tmp_path / "none", n_scans=0)
