"""`ctfm segment --output-type dicom-seg`: a DICOM SEG per DICOM series, one clear line for a NIfTI input."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import torch
from monai.networks.nets.segresnet_ds import SegResNetDS

from ctfm.io.reader import read_ct
from ctfm.segmentation import Segmenter
from ctfm.segmentation_files import segment_to_files
from ctfm.transforms.preprocess import CTPreprocessing

CLASSES = ("background", "body", "bone")


class Thresholds(SegResNetDS):
    """Known logits: class 1 above -500 HU, class 2 above +300 HU (on the [0, 1] input scale)."""

    def forward(self, x):
        hu = x * 3072.0 - 1024.0
        return torch.cat([torch.zeros_like(x), (hu > -500).float() * 2, (hu > 300).float() * 3], dim=1)


def test_segment_writes_a_seg_of_a_dicom_series_on_its_geometry_and_skips_a_nifti(
    sample_dicom_dir, sample_nifti, tmp_path
):
    segmenter = Segmenter(Thresholds(init_filters=4, out_channels=3), CLASSES, CTPreprocessing(spacing=None))
    out = tmp_path / "out"
    report = segment_to_files(
        [sample_nifti, sample_dicom_dir], out, model=segmenter, roi_size=(16, 48, 48), overlap=0.25,
        largest_component=False, output_type="dicom-seg",
    )  # fmt: skip
    assert report.segmented == [str(sample_dicom_dir)]
    assert report.skipped == [
        (str(sample_nifti), "is not a DICOM series folder: --output-type dicom-seg needs DICOM input")
    ]
    assert not (out / "series.nii.gz").exists() and not (out / "sample.seg.dcm").exists()

    seg = hd.seg.segread(out / "series.seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["body", "bone"]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "Thresholds"
    # Reloaded onto the source series' geometry (highdicom's own volume), it is the thresholded CT voxel for voxel.
    hu = read_ct(sample_dicom_dir)[0].numpy()
    expected = np.where(hu > 300, 2, np.where(hu > -500, 1, 0))
    files = sorted(sample_dicom_dir.iterdir())
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in sources])
    uids = [sources[i].SOPInstanceUID for i in order]
    planes = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, combine_segments=True)
    # Frame k is slice k along +z; a frame's (row, column) is voxel (column, row) of the reader's (x, y, z) array.
    np.testing.assert_array_equal(np.transpose(planes, (2, 1, 0)), expected)
    assert "statistics.csv" in {p.name for p in out.iterdir()}
