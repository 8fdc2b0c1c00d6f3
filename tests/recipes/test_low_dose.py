"""The low-dose recipes: 2D and 3D share everything but their dimension vars, and both train and score pairs."""

import os

import pandas as pd
import pytest
import torch
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.data.sample import make_sample_dataset
from ctfm.hub.checkpoint import read_checkpoint
from ctfm.recipes import load_recipe, run_recipe

DIMENSION_VARS = {"spatial_dims", "image_size", "batch_size", "output_dir"}
TINY_SIZE = {2: "[32,32]", 3: "[8,32,32]"}


def test_2d_and_3d_recipes_differ_only_in_dimension_vars(tmp_path):
    recipes = [load_recipe(RECIPES / "diffusion" / f"low_dose_{d}d.yaml") for d in (2, 3)]
    for recipe in recipes:
        for name in DIMENSION_VARS:
            recipe["vars"].pop(name)
    assert recipes[0] == recipes[1]
    config = Config().update(load_recipe(RECIPES / "diffusion" / "low_dose_3d.yaml"))
    config.update(f"vars::datalist={tmp_path / 'd.csv'}")
    config.update("vars::preset=tiny")
    model = config.resolve("model")
    assert model.network.spatial_dims == 3 and model.steps == 10 and model.optimizer.defaults["lr"] == 2e-4


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_recipe_trains_and_writes_per_case_metrics(tmp_path_factory, spatial_dims):
    data = tmp_path_factory.getbasetemp() / "low_dose_data"
    datalist = data / "datalist.csv"
    if not datalist.exists():
        datalist = make_sample_dataset(data, n_scans=3, shape=(24, 64, 64), seed=0)
    run = tmp_path_factory.mktemp(f"run{spatial_dims}d")
    overrides = [
        f"vars::datalist={datalist}",
        f"vars::output_dir={run}",
        "vars::preset=tiny",
        f"=vars::image_size={TINY_SIZE[spatial_dims]}",
        "vars::batch_size=2",
        "vars::num_workers=0",
        "vars::precision=32-true",
        "vars::steps=2",
        "vars::val_cases=2",
        "vars::warmup_steps=1",
        "vars::steps_per_epoch=2",
        "trainer::max_steps=2",
        "trainer::num_sanity_val_steps=0",
        "trainer::accelerator=cpu",
        "trainer::enable_progress_bar=false",
    ]
    cwd = os.getcwd()
    os.chdir(run)
    try:
        run_recipe("fit", [RECIPES / "diffusion" / f"low_dose_{spatial_dims}d.yaml", *overrides])
    finally:
        os.chdir(cwd)
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 2
    assert checkpoint["state_dict"]["network.unet.conv_in.conv.weight"].ndim == 2 + spatial_dims
    cases = pd.read_csv(run / "val_cases.csv")
    assert cases["case"].tolist()[-1] == "mean" and len(cases) == 3
    for column in ("psnr_low_dose", "ssim_low_dose", "rmse_low_dose", "psnr_restored", "ssim_restored"):
        assert torch.isfinite(torch.tensor(cases[column].to_numpy())).all()
    # Poisson (2D) or 25 HU Gaussian (3D) low dose: a real but moderate error against the full dose.
    assert (cases["rmse_low_dose"] > 5).all() and (cases["rmse_low_dose"] < 300).all()
