"""``ctfm features`` end to end: grouped by scan, batched, in the CSV's order, bad rows skipped by row number."""

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from ctfm.analysis.lesion_features import extract_lesion_features
from ctfm.analysis.lesions import lesion_crop
from ctfm.cli import main
from ctfm.hub.saving import save_pretrained
from ctfm.nn import ct_fm_encoder, pooled_features
from ctfm.transforms.lesion_crop import CT_FM_CROP, FMCIB_CROP


def test_features_cli_end_to_end(sample_ct, sample_nifti, tmp_path, capsys):
    torch.manual_seed(0)
    model_dir = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "model")
    image = sitk.ReadImage(str(sample_nifti))
    inside = [image.TransformIndexToPhysicalPoint(ijk) for ijk in [(30, 40, 10), (60, 50, 20), (48, 48, 16)]]
    rows = [
        {"image_path": str(sample_nifti), "coordX": inside[0][0], "coordY": inside[0][1], "coordZ": inside[0][2]},
        {"image_path": "missing.nii.gz", "coordX": 0.0, "coordY": 0.0, "coordZ": 0.0},
        {"image_path": str(sample_nifti), "coordX": 500.0, "coordY": 0.0, "coordZ": 0.0},
        {"image_path": str(sample_nifti), "coordX": None, "coordY": 0.0, "coordZ": 0.0},
        {"image_path": str(sample_nifti), "coordX": inside[1][0], "coordY": inside[1][1], "coordZ": inside[1][2]},
        {"image_path": str(sample_nifti), "coordX": inside[2][0], "coordY": inside[2][1], "coordZ": inside[2][2]},
    ]
    table = pd.DataFrame(rows).assign(site=["lung", "x", "x", "x", "liver", "spine"])
    table.to_csv(tmp_path / "lesions.csv", index=False)
    out = tmp_path / "features.parquet"
    code = main(["features", str(tmp_path / "lesions.csv"), "--model", str(model_dir), "--out", str(out),
                 "--batch-size", "2", "--report", str(tmp_path / "report.csv")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 3 and "3 extracted, 3 skipped" in printed  # done, some rows skipped
    assert "row 3" in printed and "missing.nii.gz" in printed
    assert "row 4" in printed and "outside the scan" in printed and "row 5" in printed
    features = pd.read_parquet(out)
    assert features["site"].tolist() == ["lung", "liver", "spine"]  # carried through, in the CSV's order
    assert {len(v) for v in features["embedding"]} == {64}
    # Each row equals its crop embedded alone: batching and grouping change nothing.
    model = __import__("ctfm").load(model_dir)
    for point, vector in zip([inside[0], inside[1], inside[2]], features["embedding"]):
        crop = lesion_crop(sample_nifti, point, size=CT_FM_CROP.size, spacing=CT_FM_CROP.spacing, orientation="SPL")
        with torch.no_grad():
            alone = pooled_features(model, CT_FM_CROP.normalise(crop.as_tensor())[None])[0]
        assert np.allclose(vector, alone.numpy(), atol=1e-5)
    assert pd.read_csv(tmp_path / "report.csv")["status"].tolist().count("skipped") == 3
    record = json.loads((tmp_path / "features.parquet.provenance.json").read_text())
    assert [entry["path"] for entry in record["inputs"]] == [
        str(sample_nifti),
        str(tmp_path / "missing.nii.gz"),
        str(tmp_path / "lesions.csv"),
    ]
    assert record["inputs"][1]["error"] == "no such file or directory" and record["inputs"][2]["role"] == "lesion table"
    assert record["command"][1] == "features" and len(record["model"]["sha256"]) == 64
    # A second run into the same file: one line, nothing replaced; a CSV of only bad rows: 1; a bad flag: 2.
    again = ["features", str(tmp_path / "lesions.csv"), "--model", str(model_dir), "--out", str(out)]
    assert main(again) == 1 and "features.parquet: exists already" in capsys.readouterr().err
    pd.DataFrame(rows[1:2]).to_csv(tmp_path / "bad.csv", index=False)
    assert (
        main(["features", str(tmp_path / "bad.csv"), "--model", str(model_dir), "--out", str(tmp_path / "b.parquet")])
        == 1
    )
    with pytest.raises(SystemExit) as exit_info:
        main([*again, "--overwrite", "--batch-size", "0"])
    assert exit_info.value.code == 2


class Mean(torch.nn.Module):  # stands in for FMCIB: shows what the model was given
    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3, 4)), x.amax((1, 2, 3, 4)), torch.tensor([x.shape[2]] * len(x))], 1)


@pytest.mark.parametrize("how", ["named", "from the model's spec"])
def test_fmcib_crop_unclipped(sample_nifti, tmp_path, how):
    """FMCIB's crop, asked for by name or (the default) read off the spec the loaded model carries."""
    from ctfm.hub.registry import MODELS, attach_spec

    image = sitk.ReadImage(str(sample_nifti))
    point = image.TransformIndexToPhysicalPoint((48, 60, 16))
    pd.DataFrame(
        [{"image_path": sample_nifti.name, "coordX": point[0], "coordY": point[1], "coordZ": point[2]}]
    ).to_csv(sample_nifti.parent / "one.csv", index=False)
    model, crop_name = (Mean(), "fmcib") if how == "named" else (attach_spec(Mean(), MODELS["fmcib"]), None)
    report = extract_lesion_features(
        sample_nifti.parent / "one.csv", tmp_path / "f.parquet", model=model, crop=crop_name
    )
    mean, top, depth = pd.read_parquet(tmp_path / "f.parquet")["embedding"][0]
    crop = lesion_crop(sample_nifti, point)
    assert report.ok and depth == 50 and np.isclose(mean, float(FMCIB_CROP.normalise(crop).mean()), atol=1e-5)
    assert np.isclose(top, (float(crop.max()) + 1024) / 3072, atol=1e-5)


def test_a_model_without_a_spec_gets_ct_fm_patch_and_an_unknown_crop_name_is_refused(sample_nifti, tmp_path):
    from ctfm.errors import UsageError

    image = sitk.ReadImage(str(sample_nifti))
    point = image.TransformIndexToPhysicalPoint((48, 60, 16))
    csv = sample_nifti.parent / "one.csv"
    row = {"image_path": sample_nifti.name, "coordX": point[0], "coordY": point[1], "coordZ": point[2]}
    pd.DataFrame([row]).to_csv(csv, index=False)
    extract_lesion_features(csv, tmp_path / "f.parquet", model=Mean())
    assert pd.read_parquet(tmp_path / "f.parquet")["embedding"][0][2] == CT_FM_CROP.size[0]
    with pytest.raises(UsageError, match="unknown crop 'fmcb'.*fmcib"):
        extract_lesion_features(csv, tmp_path / "g.parquet", model=Mean(), crop="fmcb")


def test_a_bad_coordinate_or_image_is_one_line_naming_the_csv_row(sample_nifti, tmp_path, capsys):
    torch.manual_seed(0)
    model_dir = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "model")
    image = sitk.ReadImage(str(sample_nifti))
    x, y, z = image.TransformIndexToPhysicalPoint((48, 48, 16))
    csv = tmp_path / "lesions.csv"
    csv.write_text(
        "image_path,coordX,coordY,coordZ\n"
        f"{sample_nifti},{x},{y},{z}\n"
        f"{sample_nifti},twelve,{y},{z}\n"
        f"{tmp_path / 'gone.nii.gz'},{x},{y},{z}\n"
        f"{sample_nifti},{x},,{z}\n"
    )
    code = main(["features", str(csv), "--model", str(model_dir), "--out", str(tmp_path / "f.parquet")])
    printed = capsys.readouterr()
    assert code == 3 and "1 extracted, 3 skipped" in printed.out and "Traceback" not in printed.err
    lines = printed.out.splitlines()
    assert any(f"{csv} row 3: coordX 'twelve' is not a number" in line for line in lines)
    assert any(f"{csv} row 4: " in line and "gone.nii.gz: no such file" in line for line in lines)
    assert any(f"{csv} row 5: coordY is missing" in line for line in lines)
    assert len(pd.read_parquet(tmp_path / "f.parquet")) == 1
