"""DICOM SEG writing: round trips on pydicom's real chest CT series and on synthetic (also oblique) series.

Every check goes through physical space rather than array indices (see tests/dicom_seg_checks.py).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_seg_checks import assert_round_trip, random_labels
from pydicom.data import get_testdata_file

from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES
from ctfm.data.sample import generate_ct, write_dicom_series
from ctfm.errors import InvalidScanError
from ctfm.io.dicom_seg import GENERIC_TISSUE, snomed_codes, write_dicom_seg
from ctfm.io.label_maps import write_label_map
from ctfm.io.reader import read_ct

CHEST_CT = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
NAMES = ("background", *TOTALSEGMENTATOR_CLASSES)
LEFT, RIGHT = "7771000", "24028007"


def test_the_snomed_table_codes_every_totalsegmentator_class_in_order():
    table = snomed_codes()
    assert list(table) == list(TOTALSEGMENTATOR_CLASSES)
    for name, code in table.items():
        assert code.category.scheme_designator == code.type.scheme_designator == "SCT" and code.type.value.isdigit()
        side = (code.type_modifier or code.region_modifier or GENERIC_TISSUE).value
        if name == "lung_middle_lobe_right":  # "Middle lobe of right lung": the side is in the code itself
            continue
        words = name.split("_")
        assert side == (LEFT if "left" in words else RIGHT if "right" in words else GENERIC_TISSUE.value), name
    assert table["liver"].type.value == "10200004" and table["vertebrae_L1"].type.value == "66794005"
    assert table["kidney_cyst_left"].region is not None and table["kidney_cyst_left"].region.meaning == "Kidney"


def test_a_real_chest_ct_series_round_trips_with_117_classes(tmp_path):
    hu = read_ct(CHEST_CT)
    affine = hu.affine.numpy()
    labels = random_labels(hu.shape[1:], np.arange(1, 118), fill=0.9)
    nifti = write_label_map(labels, affine, tmp_path / "labels.nii.gz", NAMES)
    seg_path = write_dicom_seg(labels, CHEST_CT, NAMES, tmp_path / "CT5N.seg.dcm", affine=affine,
                               algorithm_name="ct-fm-whole-body", parameters={"roi_size": "96 160 160"})  # fmt: skip
    ds = assert_round_trip(seg_path, CHEST_CT, nifti, NAMES)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [NAMES[v] for v in present]
    assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == list(range(1, len(present) + 1))
    liver = next(s for s in ds.SegmentSequence if s.SegmentLabel == "liver")
    assert (
        liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004" and liver.SegmentAlgorithmType == "AUTOMATIC"
    )
    kidney = next(s for s in ds.SegmentSequence if s.SegmentLabel == "kidney_left")
    modifier = kidney.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == (LEFT, "Left")
    algorithm = liver.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "ct-fm-whole-body" and algorithm.AlgorithmVersion == "0.1.0"
    assert algorithm.AlgorithmParameters == "roi_size=96 160 160"
    assert ds.Manufacturer == "ctfm" and ds.SoftwareVersions == "ctfm 0.1.0" and str(ds.ContentCreatorName) == "ctfm^"
    assert ds.ManufacturerModelName == "ct-fm-whole-body" and ds.SeriesDescription == "ct-fm-whole-body segmentation"


def test_a_label_map_segmentation_round_trips_compressed(tmp_path):
    hu = read_ct(CHEST_CT)
    affine = hu.affine.numpy()
    labels = random_labels(hu.shape[1:], np.arange(1, 118), seed=6, fill=0.9)
    nifti = write_label_map(labels, affine, tmp_path / "labels.nii.gz", NAMES)
    seg_path = write_dicom_seg(labels, CHEST_CT, NAMES, tmp_path / "CT5N.seg.dcm", affine=affine,
                               algorithm_name="ct-fm-whole-body", segmentation_type="LABELMAP")  # fmt: skip
    ds = assert_round_trip(seg_path, CHEST_CT, nifti, NAMES)
    assert ds.SegmentationType == "LABELMAP" and ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    assert int(ds.NumberOfFrames) == hu.shape[3] and ds.SegmentSequence[0].SegmentNumber == 0


def test_a_synthetic_series_round_trips_from_its_reader_grid_and_from_a_reoriented_copy(tmp_path, sample_dicom_dir):
    from monai.transforms import Orientation

    from ctfm.transforms.preprocess import RAS_LABELS

    hu = read_ct(sample_dicom_dir)
    names = ("background", "body", "lung", "bone", "tumour")
    labels = random_labels(hu.shape[1:], [1, 2, 3, 4], seed=1, fill=0.3)
    nifti = write_label_map(labels, hu.affine.numpy(), tmp_path / "labels.nii.gz", names)
    seg_path = write_dicom_seg(labels, sample_dicom_dir, names, tmp_path / "a.seg.dcm", affine=hu.affine.numpy(),
                               algorithm_name="tiny", algorithm_type="SEMIAUTOMATIC")  # fmt: skip
    ds = assert_round_trip(seg_path, sample_dicom_dir, nifti, names)
    tumour = next(s for s in ds.SegmentSequence if s.SegmentLabel == "tumour")
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == GENERIC_TISSUE.value  # no code for "tumour"
    assert tumour.SegmentAlgorithmType == "SEMIAUTOMATIC"

    # The same labels in the orientation previews use (axes permuted and flipped): the very same frames.
    from monai.data import MetaTensor

    oriented = Orientation(axcodes="SPL", labels=RAS_LABELS)(
        MetaTensor(labels[None].astype(np.float32), affine=hu.affine)
    )
    assert oriented.shape[1:] != labels.shape
    again = write_dicom_seg(oriented[0].numpy().astype(np.uint8), sample_dicom_dir, names, tmp_path / "b.seg.dcm",
                            affine=oriented.affine.numpy(), algorithm_name="tiny")  # fmt: skip
    np.testing.assert_array_equal(pydicom.dcmread(again).pixel_array, ds.pixel_array)


def oblique_series(folder: Path) -> Path:
    """An 8-slice series tilted 30 degrees about two axes, slices stored in reverse file order, non-square pixels."""
    sample = generate_ct((8, 20, 14), (3.0, 0.8, 1.1), seed=5)
    folder = write_dicom_series(sample, folder)
    a, b = np.deg2rad(30), np.deg2rad(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]]) @ np.array(
        [[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]]
    )
    row_cosine, column_cosine, normal = rotation.T
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        k = 8 - int(ds.InstanceNumber)  # instance 1 is the last slice along the normal
        ds.ImageOrientationPatient = [round(float(x), 6) for x in (*row_cosine, *column_cosine)]
        ds.ImagePositionPatient = [round(float(x), 4) for x in np.array([10.0, -20.0, 30.0]) + k * 3.0 * normal]
        ds.save_as(path)
    return folder


def test_an_oblique_series_in_reverse_file_order_round_trips(tmp_path):
    series = oblique_series(tmp_path / "oblique")
    hu = read_ct(series)
    labels = random_labels(hu.shape[1:], [1, 2, 3], seed=2)
    names = ("background", "spleen", "liver", "heart")
    nifti = write_label_map(labels, hu.affine.numpy(), tmp_path / "labels.nii.gz", names)
    seg_path = write_dicom_seg(labels, series, names, tmp_path / "oblique.seg.dcm", affine=hu.affine.numpy(),
                               algorithm_name="tiny")  # fmt: skip
    assert_round_trip(seg_path, series, nifti, names)


def test_label_maps_off_the_series_grid_or_without_segments_are_refused_naming_the_folder(tmp_path):
    hu = read_ct(CHEST_CT)
    affine = hu.affine.numpy()
    labels = random_labels(hu.shape[1:], [1, 5], seed=3)
    out = tmp_path / "x.seg.dcm"
    resampled = affine.copy()
    resampled[:3, :3] *= 2.0
    cases = [
        (labels, resampled, "not the series' axes"),
        (labels, affine[0], r"the label map's affine has shape \(4,\), not 4x4"),
        (labels[:, :, :4], affine, r"does not cover the series' grid"),
        (np.zeros_like(labels), affine, "the label map is empty"),
        (np.full_like(labels, 200), affine, "holds value 200 but only 118 classes are named"),
    ]
    for array, matrix, problem in cases:
        with pytest.raises(InvalidScanError, match=f"^{CHEST_CT}: .*{problem}"):
            write_dicom_seg(array, CHEST_CT, NAMES, out, affine=matrix, algorithm_name="m")
    assert not out.exists()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_dciodvfy_finds_no_error_in_a_written_seg(tmp_path):
    hu = read_ct(CHEST_CT)
    labels = random_labels(hu.shape[1:], [2, 3, 23, 51], seed=4)
    seg_path = write_dicom_seg(labels, CHEST_CT, NAMES, tmp_path / "x.seg.dcm", affine=hu.affine.numpy(),
                               algorithm_name="ct-fm-whole-body")  # fmt: skip
    report = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True, check=False)
    lines = (report.stdout + report.stderr).splitlines()
    assert "Segmentation" in lines and not [line for line in lines if line.startswith(("Error", "Warning"))], lines
