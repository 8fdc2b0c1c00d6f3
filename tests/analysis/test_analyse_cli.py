"""`ctfm analyse saliency | pca | stability` from the command line, as a user runs them, on a tiny saved encoder."""

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ctfm.cli import main
from ctfm.data.sample import generate_ct, write_nifti
from ctfm.hub import save_pretrained

PATCH = ["8", "32", "32"]


@pytest.fixture(scope="module")
def model_and_scan(tmp_path_factory, tiny_encoder):
    root = tmp_path_factory.mktemp("analyse")
    scan = write_nifti(generate_ct((16, 48, 48), seed=0), root / "scan.nii.gz")
    return str(save_pretrained(tiny_encoder, root / "encoder")), str(scan)


def test_saliency_pca_and_stability_write_their_files_and_provenance(model_and_scan, tmp_path, capsys):
    model, scan = model_and_scan
    common = ["--model", model, "--patch-size", *PATCH]
    assert main(["analyse", "saliency", scan, "--window", "4", "8", "8", *common, "--out", str(tmp_path / "s")]) == 0
    saliency = nib.load(tmp_path / "s" / "saliency.nii.gz")
    np.testing.assert_allclose(saliency.affine, nib.load(scan).affine, atol=1e-4)

    assert main(["analyse", "pca", scan, scan, "--overlap", "0.5", *common, "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "pca_concepts.png").read_bytes()[:4] == b"\x89PNG"

    shifted = ["analyse", "stability", scan, scan, "--shift", "0", "0", "0", *common, "--out", str(tmp_path / "t")]
    assert main(shifted) == 0
    assert pd.read_csv(tmp_path / "t" / "stability.csv")["mean"][0] == pytest.approx(1.0, abs=1e-5)
    assert capsys.readouterr().out.splitlines()[-1].startswith("patches 12, mean 1.000")
    for folder, analysis in {"s": "saliency", "p": "pca", "t": "stability"}.items():
        record = json.loads((tmp_path / folder / "provenance.json").read_text())
        assert record["command"][1:3] == ["analyse", analysis]
        assert record["model"]["name"] == model and record["preprocessing"]["spacing"] == [3.0, 1.0, 1.0]

    assert main(shifted) == 1  # the second run into the same folder stops before work
