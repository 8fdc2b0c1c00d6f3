"""The dictionary form of the canonical preprocessing: the same image, label maps that follow it, and inversion."""

import importlib.resources

import numpy as np
import pytest
import torch
from monai.transforms import Invertd

from ctfm.data.sample import LABEL, TISSUES, write_labels_nifti
from ctfm.errors import InvalidScanError
from ctfm.io.reader import read_label_map
from ctfm.transforms.dictionary import CTPreprocessingd
from ctfm.transforms.preprocess import HU_RANGE, CTPreprocessing

SLICER_DATA = importlib.resources.files("slicerio") / "data"
SETTINGS = [CTPreprocessing(spacing=None, min_size=(8, 32, 32)), CTPreprocessing(min_size=(8, 32, 32))]


@pytest.fixture(scope="module")
def sample_labels(sample_ct, tmp_path_factory):
    return write_labels_nifti(sample_ct, tmp_path_factory.mktemp("labels") / "labels.nii.gz")


@pytest.mark.parametrize("settings", SETTINGS, ids=["native", "3x1x1"])
def test_the_image_is_exactly_the_array_form(sample_nifti, sample_labels, settings):
    out = CTPreprocessingd(settings, label_keys=["label"])({"image": sample_nifti, "label": sample_labels})
    expected = settings(sample_nifti)
    assert torch.equal(out["image"].as_tensor(), expected.as_tensor())
    assert torch.allclose(out["image"].affine, expected.affine)
    assert out["label"].shape == out["image"].shape and torch.allclose(out["label"].affine, out["image"].affine)


@pytest.mark.parametrize("settings", SETTINGS, ids=["native", "3x1x1"])
def test_labels_follow_the_image(sample_nifti, sample_labels, settings):
    out = CTPreprocessingd(settings, label_keys=["label"])({"image": sample_nifti, "label": sample_labels})
    image, label = out["image"][0], out["label"][0]
    assert set(torch.unique(label).tolist()) <= set(range(len(TISSUES)))  # nearest neighbour: no mixed values
    low, high = HU_RANGE
    for tissue, hu in (("lung", -850), ("liver", 60), ("bone", 700)):
        mean_hu = float(image[label == LABEL[tissue]].mean()) * (high - low) + low
        assert abs(mean_hu - hu) < 250, (tissue, mean_hu)


@pytest.mark.parametrize("settings", SETTINGS, ids=["native", "3x1x1"])
def test_invertd_puts_a_prediction_on_the_input_grid(sample_nifti, sample_labels, settings):
    preprocess = CTPreprocessingd(settings, label_keys=["label"])
    out = preprocess({"image": sample_nifti, "label": sample_labels})
    out["pred"] = out["label"].clone()  # a perfect prediction on the model's grid
    restored = Invertd(keys="pred", transform=preprocess, orig_keys="label", nearest_interp=True)(out)["pred"]
    original = read_label_map(sample_labels)
    assert restored.shape == original.shape
    assert torch.allclose(restored.affine.double(), original.affine.double(), atol=1e-4)
    agreement = float((restored.as_tensor() == original.as_tensor()).float().mean())
    assert agreement == 1.0 if settings.spacing is None else agreement > 0.98


def test_a_real_lps_chest_ct_and_its_segmentation_stay_aligned_and_invert():
    """3D Slicer's CTChest (NRRD, LPS, 3 x 3 x 10 mm) and its label map: lungs stay on air, bones on bone."""
    image, labels = SLICER_DATA / "CTChest4.nrrd", SLICER_DATA / "Segmentation.seg.nrrd"
    preprocess = CTPreprocessingd(CTPreprocessing(min_size=(8, 32, 32)), label_keys=["label"])
    out = preprocess({"image": str(image), "label": str(labels)})
    ct = out["image"][0] * (HU_RANGE[1] - HU_RANGE[0]) + HU_RANGE[0]
    label = out["label"][0]
    lungs, spine = (label == 5) | (label == 6), (label >= 2) & (label <= 4)  # 5, 6 lungs; 2-4 vertebral column
    assert float(ct[lungs].median()) < -600 and float(ct[spine].median()) > 150
    out["pred"] = out["label"].clone()
    restored = Invertd(keys="pred", transform=preprocess, orig_keys="label", nearest_interp=True)(out)["pred"]
    original = read_label_map(labels)
    assert restored.shape == original.shape
    assert torch.allclose(restored.affine.double(), original.affine.double(), atol=1e-3)
    assert float((restored.as_tensor() == original.as_tensor()).float().mean()) > 0.97


def test_a_label_map_on_another_grid_is_refused_naming_it(sample_nifti, sample_ct, tmp_path):
    from ctfm.data.sample import generate_ct

    other = write_labels_nifti(generate_ct((16, 48, 48)), tmp_path / "other.nii.gz")
    with pytest.raises(InvalidScanError, match=rf"{other}: has shape .* not on the scan's grid"):
        CTPreprocessingd(label_keys=["label"])({"image": sample_nifti, "label": str(other)})


def test_a_label_map_with_fractions_is_refused(tmp_path, sample_ct):
    from ctfm.data.sample import write_nifti

    path = write_nifti(sample_ct, tmp_path / "not_labels.nii.gz")  # HU values: negative
    with pytest.raises(InvalidScanError, match="values must be non-negative integers"):
        read_label_map(path)
    assert np.isfinite(read_label_map(write_labels_nifti(sample_ct, tmp_path / "l.nii.gz")).numpy()).all()
