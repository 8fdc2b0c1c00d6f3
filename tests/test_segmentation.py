"""ctfm.segment and `ctfm segment`: labels on the input's own grid (NIfTI and DICOM), files, statistics, bad input."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.networks.nets.segresnet_ds import SegResNetDS

import ctfm
from ctfm.io.reader import read_ct
from ctfm.nn import ct_fm_segresnet
from ctfm.segmentation import Segmenter, stitched_argmax
from ctfm.transforms.preprocess import CTPreprocessing

ROI = (16, 48, 48)
CLASSES = ("background", "body", "bone")


class Thresholds(SegResNetDS):
    """A SegResNetDS whose logits are known: class 1 above -500 HU, class 2 above +300 HU (on the [0, 1] scale)."""

    def forward(self, x):
        hu = x * 3072.0 - 1024.0
        return torch.cat([torch.zeros_like(x), (hu > -500).float() * 2, (hu > 300).float() * 3], dim=1)


def thresholds():
    return Segmenter(Thresholds(init_filters=4, out_channels=3), CLASSES, CTPreprocessing(spacing=None))


def expected_labels(hu):
    return np.where(hu > 300, 2, np.where(hu > -500, 1, 0))


def test_slab_stitching_gives_the_labels_of_monais_sliding_window():
    torch.manual_seed(0)
    network = ct_fm_segresnet(init_filters=4, out_channels=5, dsdepth=2).eval()
    volume = torch.rand(1, 30, 40, 52)
    roi = (16, 32, 32)
    labels = stitched_argmax(network, volume, roi, overlap=0.625, batch_size=3)
    with torch.inference_mode():
        reference = SlidingWindowInferer(roi, 3, 0.625, mode="gaussian")(volume[None], network)[0].argmax(0)
    assert labels.shape == (30, 40, 52) and float((labels == reference).float().mean()) > 0.999


@pytest.mark.parametrize("source", ["sample_nifti", "sample_dicom_dir"])
def test_labels_come_back_on_the_inputs_grid(source, request):
    path = request.getfixturevalue(source)
    hu = read_ct(path)
    labels = ctfm.segment(thresholds(), path, roi_size=ROI, overlap=0.25, largest_component=False)
    assert labels.shape == hu.shape and labels.dtype == torch.int64
    assert np.allclose(labels.affine.numpy(), hu.affine.numpy(), atol=1e-6)
    # Oriented SPL, cropped to the body and padded inside, then inverted: every voxel is where it started.
    np.testing.assert_array_equal(labels[0].numpy(), expected_labels(hu[0].numpy()))
    only_bone = ctfm.segment(thresholds(), path, roi_size=ROI, overlap=0.25, classes=["bone"], largest_component=False)
    assert set(only_bone.unique().tolist()) == {0, 2}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    folder = ctfm.save_pretrained(ct_fm_segresnet(init_filters=4, out_channels=3), tmp_path_factory.mktemp("m"))
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    return folder


def test_a_saved_segresnetds_segments_a_nifti_and_a_dicom_series_from_the_command_line(
    tiny_model, sample_nifti, sample_dicom_dir, tmp_path, capsys
):
    from ctfm.cli import main

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "out"
    argv = ["segment", str(sample_nifti), str(bad), str(sample_dicom_dir), "--model", str(tiny_model)]
    argv += ["--out", str(out), "--roi", *map(str, ROI), "--overlap", "0.25", "--batch-size", "4"]
    assert main([*argv, "--split-masks", "--preview"]) == 3  # done, one input skipped
    printed = capsys.readouterr().out
    assert "2 segmented, 1 skipped" in printed and f"skipped {bad}: cannot be read as NIfTI" in printed
    for source, name in ((sample_nifti, "sample"), (sample_dicom_dir, "series")):
        hu = read_ct(source)
        written = nib.load(out / f"{name}.nii.gz")
        assert written.shape == tuple(hu.shape[1:]) and np.allclose(written.affine, hu.affine.numpy(), atol=1e-4)
        assert json.loads((out / f"{name}.json").read_text())["labels"] == {"0": "background", "1": "body", "2": "bone"}
        labels = np.asarray(written.dataobj)
        for value, class_name in ((1, "body"), (2, "bone")):
            mask = np.asarray(nib.load(out / name / f"{class_name}.nii.gz").dataobj)
            np.testing.assert_array_equal(mask, labels == value)
        assert (out / f"{name}.png").stat().st_size > 1000
    statistics = pd.read_csv(out / "statistics.csv")
    assert list(statistics.columns) == ["image", "label", "class", "volume_ml", "mean_hu"]
    row = statistics[(statistics["image"] == str(sample_nifti)) & (statistics["label"] == 1)].iloc[0]
    labels = np.asarray(nib.load(out / "sample.nii.gz").dataobj)
    hu = read_ct(sample_nifti)[0].numpy()
    voxel_ml = abs(np.linalg.det(read_ct(sample_nifti).affine.numpy()[:3, :3])) / 1000
    assert row["volume_ml"] == pytest.approx((labels == 1).sum() * voxel_ml)
    if (labels == 1).any():
        assert row["mean_hu"] == pytest.approx(hu[labels == 1].mean(), rel=1e-4)


def test_a_model_without_a_decoder_or_unknown_classes_is_refused(tmp_path, sample_nifti):
    from ctfm.errors import CTFMError
    from ctfm.nn import ct_fm_encoder

    encoder = ctfm.save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "encoder")
    with pytest.raises(CTFMError, match="is a SegResEncoder, not a segmentation model"):
        ctfm.segment(str(encoder), sample_nifti)
    with pytest.raises(CTFMError, match=r"the model has no classes \['liver'\]"):
        ctfm.segment(thresholds(), sample_nifti, roi_size=ROI, classes=["liver"])


def test_same_named_inputs_keep_their_own_outputs_and_nothing_is_overwritten(
    tiny_model, sample_nifti, sample_dicom_dir, tmp_path, capsys
):
    """The TotalSegmentator layout (s0001/ct.nii.gz, s0002/ct.nii.gz); exit codes 0, 1, 2 and the provenance."""
    import shutil

    from ctfm.cli import main

    for subject in ("s0001", "s0002"):
        (tmp_path / subject).mkdir()
        shutil.copyfile(sample_nifti, tmp_path / subject / "ct.nii.gz")
    out = tmp_path / "out"
    inputs = [str(tmp_path / "s0001" / "ct.nii.gz"), str(tmp_path / "s0002" / "ct.nii.gz"), str(sample_dicom_dir)]
    argv = ["segment", *inputs]
    argv += ["--model", str(tiny_model), "--roi", *map(str, ROI), "--overlap", "0.25"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "3 segmented, 0 skipped" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["s0001_ct.nii.gz", "s0002_ct.nii.gz", "series.nii.gz"]
    record = json.loads((out / "provenance.json").read_text())
    assert record["command"][:2] == ["ctfm", "segment"] and record["model"]["name"] == str(tiny_model)
    assert len(record["model"]["sha256"]) == 64 and record["preprocessing"]["hu_range"]
    first, _, dicom = record["inputs"]
    assert first["output_name"] == "s0001_ct" and first["size_bytes"] == sample_nifti.stat().st_size
    assert len(first["sha256"]) == 64 and dicom["series_instance_uid"] and dicom["output_name"] == "series"
    # A second run into the same folder: one line naming the file, nothing written; --overwrite replaces.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "statistics.csv" in err and "exists already" in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    # --out is a file: one line; only bad inputs: 1; a bad flag value: 2.
    assert main([*argv, "--out", str(sample_nifti)]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti")
    assert main(["segment", str(bad), "--model", str(tiny_model), "--out", str(tmp_path / "bad")]) == 1
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--out", str(tmp_path / "flag"), "--batch-size", "0"])
    assert exit_info.value.code == 2
