"""SegmentationModule.predict_step with ``output_type="dicom-seg"``: a SEG for a DICOM series, NIfTI otherwise."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dicom_seg_checks import assert_round_trip
from monai.data import list_data_collate
from monai.networks.nets.segresnet_ds import SegResNetDS

from ctfm.errors import CTFMError
from ctfm.io.label_maps import write_label_map
from ctfm.io.reader import read_ct
from ctfm.tasks.segmentation import SegmentationModule

CLASSES = ("background", "body", "bone")


class Thresholds(SegResNetDS):
    """Known logits on HU input: class 1 above -500 HU, class 2 above +300 HU."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), (x > -500).float() * 2, (x > 300).float() * 3], dim=1)


def predictor(tmp_path, output_type="dicom-seg") -> SegmentationModule:
    module = SegmentationModule(Thresholds(init_filters=4, out_channels=3), CLASSES, roi_size=(16, 48, 48),
                                output_dir=tmp_path / "run", output_type=output_type)  # fmt: skip
    module._trainer = SimpleNamespace(datamodule=None)  # predict_step only asks the trainer for the data module
    return module


def test_a_dicom_series_prediction_is_a_seg_and_a_nifti_one_stays_nifti(tmp_path, sample_dicom_dir, sample_nifti):
    module = predictor(tmp_path)
    for source, name in ((sample_dicom_dir, "series"), (sample_nifti, "sample")):
        batch = list_data_collate([{"image": read_ct(source), "image_id": name}])
        with torch.inference_mode():
            written = module.predict_step(batch, 0)
        assert [p.name for p in written] == [f"{name}.seg.dcm" if name == "series" else f"{name}.nii.gz"]
    hu = read_ct(sample_dicom_dir)
    expected = np.where(hu[0].numpy() > 300, 2, np.where(hu[0].numpy() > -500, 1, 0))
    nifti = write_label_map(expected, hu.affine.numpy(), tmp_path / "expected.nii.gz", CLASSES)
    ds = assert_round_trip(tmp_path / "run" / "predictions" / "series.seg.dcm", sample_dicom_dir, nifti, CLASSES)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == ["body", "bone"]


def test_an_unknown_output_type_is_refused():
    with pytest.raises(CTFMError, match="output type 'dicom' is not one of nifti, dicom-seg"):
        SegmentationModule(Thresholds(init_filters=4, out_channels=3), CLASSES, (16, 48, 48), output_type="dicom")
