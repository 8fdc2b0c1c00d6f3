"""`ctfm pseudo-label --output-type dicom-seg`: the same labels as the NIfTI output, as a SEMIAUTOMATIC DICOM SEG."""

from __future__ import annotations

import pydicom
import pytest
from dicom_seg_checks import assert_round_trip
from labelled_sample import CLASSES, PATCH, SHAPE, SPACING

from ctfm.analysis.prototypes import compute_prototypes
from ctfm.analysis.pseudo_labels import pseudo_label
from ctfm.data.sample import generate_ct, write_dicom_series
from ctfm.transforms.preprocess import CTPreprocessing


@pytest.mark.slow
def test_pseudo_labels_of_a_dicom_series_as_a_seg_equal_the_nifti_output(tiny_encoder, labelled, tmp_path):
    _, reference, reference_labels, target, _ = labelled
    prototypes = compute_prototypes(
        tiny_encoder, [reference], [reference_labels], patch_size=PATCH, preprocess=CTPreprocessing(spacing=None)
    )
    series = write_dicom_series(generate_ct(SHAPE, SPACING, seed=7), tmp_path / "series")
    as_nifti = pseudo_label([series], prototypes, tiny_encoder, tmp_path / "nifti", preview=False)
    assert as_nifti.labelled == [str(series)]
    as_seg = pseudo_label([target, series], prototypes, tiny_encoder, tmp_path / "seg", preview=False,
                          output_type="dicom-seg", model_name="tiny", prototypes_path="prototypes.pt")  # fmt: skip
    assert as_seg.labelled == [str(series)]
    assert as_seg.skipped == [(str(target), "is not a DICOM series folder: --output-type dicom-seg needs DICOM input")]
    names = ("background", *CLASSES.values())
    ds = assert_round_trip(tmp_path / "seg" / "series.seg.dcm", series, tmp_path / "nifti" / "series.nii.gz", names)
    assert {s.SegmentLabel for s in ds.SegmentSequence} <= set(CLASSES.values()) and len(ds.SegmentSequence) >= 1
    assert {s.SegmentAlgorithmType for s in ds.SegmentSequence} == {"SEMIAUTOMATIC"}
    algorithm = ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "tiny" and algorithm.AlgorithmParameters.startswith("prototypes=prototypes.pt,")
    assert not (tmp_path / "seg" / "series.nii.gz").exists()
    assert isinstance(pydicom.dcmread(tmp_path / "seg" / "series.seg.dcm").SOPInstanceUID, str)
