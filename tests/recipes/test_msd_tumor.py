"""msd_tumor.yaml: published fine-tuning lr, and validate writes the per-case tumour Dice and ASD CSV."""

import os

import numpy as np
import pandas as pd
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.recipes import load_recipe, run_recipe

RECIPE = RECIPES / "msd_tumor.yaml"


def test_validate_writes_per_case_dice_and_surface_distance(tmp_path):
    from ctfm.data.sample_layouts import make_msd_sample

    task = make_msd_sample(tmp_path / "Task03_Liver", n_cases=3, shape=(24, 64, 64))
    config = Config().update(load_recipe(RECIPE)).update(f"vars::data_dir={task}")
    assert config.get("vars::lr") == 5e-4 and config.resolve("model::network").out_channels == 3
    run = tmp_path / "run"
    run.mkdir()
    overrides = [f"vars::data_dir={task}", f"vars::output_dir={run}", "vars::weights=none", "vars::init_filters=4"]
    overrides += ["=vars::patch_size=[16,32,32]", "vars::precision=32-true", "vars::num_workers=0"]
    overrides += ["trainer::accelerator=cpu", "trainer::enable_progress_bar=false", "trainer::sync_batchnorm=false"]
    cwd = os.getcwd()
    os.chdir(run)
    try:
        run_recipe("validate", [RECIPE, *overrides, "data::val_fraction=0.67"])
    finally:
        os.chdir(cwd)
    cases = pd.read_csv(run / "val_cases.csv")
    assert list(cases.columns) == ["image_id", "liver_dice", "cancer_dice", "liver_asd_mm", "cancer_asd_mm"]
    assert len(cases) == 3 and cases["image_id"].iloc[-1] == "mean"
    per_case = cases.iloc[:-1]
    assert per_case["liver_dice"].between(0, 1).all()
    assert np.isclose(cases["liver_dice"].iloc[-1], per_case["liver_dice"].mean())
    assert (per_case["liver_asd_mm"].dropna() >= 0).all()
