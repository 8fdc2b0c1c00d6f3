"""`lighter predict lighter_configs/embed.yaml`: the corpus table ctfm embed writes, resumable, bad scans skipped."""

import os

import numpy as np
import pandas as pd
import torch
from recipe_runner import RECIPES

import ctfm
from ctfm.embedding_table import embedding_matrix, read_settings, read_table
from ctfm.nn import ct_fm_encoder
from ctfm.recipes import run_recipe

PATCH = (8, 32, 32)


def test_embed_recipe_writes_the_table_and_resumes(tmp_path):
    from ctfm.data.sample import generate_ct, write_nifti

    scans = [write_nifti(generate_ct((16, 48, 48), seed=i), tmp_path / f"scan{i}.nii.gz") for i in range(2)]
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti")
    pd.DataFrame({"image": ["scan0.nii.gz", "broken.nii.gz", "scan1.nii.gz"]}).to_csv(
        tmp_path / "list.csv", index=False
    )
    torch.manual_seed(0)
    encoder_dir = ctfm.save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "encoder")
    out = tmp_path / "table.parquet"
    inputs = [
        RECIPES / "embed.yaml",
        f"vars::datalist={tmp_path / 'list.csv'}",
        f"vars::model={encoder_dir}",
        f"vars::out={out}",
        f"=vars::patch_size={list(PATCH)}",
        "vars::num_workers=0",
        "trainer::accelerator=cpu",
        "trainer::enable_progress_bar=false",
    ]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_recipe("predict", inputs)
        parts = sorted(out.iterdir())
        run_recipe("predict", inputs)  # a re-run finds every usable scan in the table already
    finally:
        os.chdir(cwd)
    assert sorted(out.iterdir()) == parts and all(p.name.startswith("part-rank0-") for p in parts)
    frame, settings = read_table(out)
    assert sorted(frame["path"]) == sorted(str(s) for s in scans)  # the broken file is skipped, not fatal
    assert (
        settings == read_settings(out)
        and settings["model"] == str(encoder_dir)
        and settings["patch_size"] == list(PATCH)
    )
    model = ctfm.load(encoder_dir)
    for path, vector in zip(frame["path"], embedding_matrix(frame)):
        expected = ctfm.embed(model, path, patch_size=PATCH).numpy()
        np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-6)
