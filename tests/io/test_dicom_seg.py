"""DICOM SEG writing: round trips on pydicom's real chest CT series and on synthetic (also oblique) series.

Every check goes through physical space rather than array indices: a frame's pixel (row, column) sits where its
referenced source slice's own position, orientation and pixel spacing put it, and the label there must be the NIfTI
label map's label at that point. A transposed, flipped or shifted mapping fails these checks.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES
from ctfm.data.sample import generate_ct, write_dicom_series
from ctfm.errors import InvalidScanError
from ctfm.io.dicom_seg import GENERIC_TISSUE, snomed_codes, write_dicom_seg
from ctfm.io.reader import read_ct
from ctfm.tasks.segmentation import write_label_map

CHEST_CT = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests/98892001/CT5N"
NAMES = ("background", *TOTALSEGMENTATOR_CLASSES)
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LEFT, RIGHT = "7771000", "24028007"


def random_labels(shape, values, seed=0, fill=0.6):
    """Labels scattered voxel by voxel (any transposition or flip changes them), background elsewhere."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.asarray(values), size=shape)
    return np.where(rng.random(shape) < fill, labels, 0).astype(np.uint8)


def pixel_points(source: pydicom.Dataset) -> np.ndarray:
    """LPS mm of every pixel (row, column) of a source slice, from its own header: ``(rows, columns, 3)``."""
    position = np.array([float(x) for x in source.ImagePositionPatient])
    row_cosine = np.array([float(x) for x in source.ImageOrientationPatient[:3]])
    column_cosine = np.array([float(x) for x in source.ImageOrientationPatient[3:]])
    row_spacing, column_spacing = (float(x) for x in source.PixelSpacing)
    rows, columns = np.meshgrid(np.arange(source.Rows), np.arange(source.Columns), indexing="ij")
    return position + columns[..., None] * column_spacing * row_cosine + rows[..., None] * row_spacing * column_cosine


def labels_at(nifti: Path, lps: np.ndarray) -> np.ndarray:
    """The NIfTI label map's labels at LPS points, which must be its voxel centres."""
    image = nib.load(nifti)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    index = (np.linalg.inv(image.affine) @ np.c_[ras.reshape(-1, 3), np.ones(ras.size // 3)].T)[:3].T
    assert np.abs(index - np.rint(index)).max() < 1e-3, "a frame pixel is not on a NIfTI voxel centre"
    index = np.rint(index).astype(int)
    return np.asarray(image.dataobj)[tuple(index.T)].reshape(lps.shape[:-1])


def assert_round_trip(seg_path: Path, series: Path, nifti: Path, class_names=NAMES) -> pydicom.Dataset:
    """The SEG references ``series`` and decodes, frame by frame and pixel by pixel, to the NIfTI label map."""
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in series.iterdir() if p.is_file())}
    first = next(iter(sources.values()))
    ds = pydicom.dcmread(seg_path)
    assert ds.SOPClassUID == SEGMENTATION_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.PatientID == first.PatientID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources)
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose([float(x) for x in orientation], [float(x) for x in first.ImageOrientationPatient])
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    np.testing.assert_allclose([float(x) for x in measures.PixelSpacing], [float(x) for x in first.PixelSpacing])
    segment_class = {int(s.SegmentNumber): class_names.index(s.SegmentLabel) for s in ds.SegmentSequence}

    # pydicom: every frame sits on the slice it references and holds exactly that slice's voxels of its class.
    masks = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    decoded = {uid: np.zeros((ds.Rows, ds.Columns), np.int64) for uid in sources}
    for frame, item in zip(masks, ds.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        source = sources[uid]
        position = [float(x) for x in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(x) for x in source.ImagePositionPatient], atol=1e-4)
        value = segment_class[int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        assert not (decoded[uid][frame > 0]).any(), "two segments claim one pixel"
        decoded[uid][frame > 0] = value
    for uid, source in sources.items():
        np.testing.assert_array_equal(decoded[uid], labels_at(nifti, pixel_points(source)))

    # highdicom: its own decoding per source instance gives the same label maps.
    seg = hd.seg.segread(seg_path)
    uids = list(sources)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    for uid, plane in zip(uids, pixels, strict=True):
        relabelled = np.vectorize(lambda n: segment_class.get(int(n), 0))(plane)
        np.testing.assert_array_equal(relabelled, decoded[uid])
    return ds


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
    ds = assert_round_trip(seg_path, CHEST_CT, nifti)
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
