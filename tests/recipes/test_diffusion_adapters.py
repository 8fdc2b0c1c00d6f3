"""The adapter recipes: 2D and 3D share all but their dimension vars, run through lighter.Runner, refuse bad input."""

import os

import pandas as pd
import pytest
import torch
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.errors import CTFMError
from ctfm.hub.checkpoint import read_checkpoint
from ctfm.recipes import load_recipe, run_recipe

DIMENSION_VARS = {"spatial_dims", "image_size", "batch_size", "output_dir", "pixels_per_image", "samples_per_scan"}
TINY_SIZE = {2: "[16,16]", 3: "[8,16,16]"}
CPU = [
    "vars::num_workers=0",
    "vars::precision=32-true",
    "trainer::accelerator=cpu",
    "trainer::enable_progress_bar=false",
]


def run(stage, recipe, cwd, *overrides, **stage_kwargs):
    here = os.getcwd()
    os.chdir(cwd)  # lighter looks for a __lighter__.py project file in the working folder
    try:
        run_recipe(stage, [RECIPES / "diffusion" / recipe, *overrides, *CPU], **stage_kwargs)
    finally:
        os.chdir(here)


@pytest.mark.parametrize("task", ["segment", "classify"])
def test_2d_and_3d_recipes_differ_only_in_dimension_vars(task):
    recipes = [load_recipe(RECIPES / "diffusion" / f"{task}_{d}d.yaml") for d in (2, 3)]
    for recipe in recipes:
        for name in ("checkpoint", "datalist", "timesteps", "batch_size", "max_epochs", "lr", "num_workers"):
            assert name in recipe["vars"]
        for name in ("precision", "output_dir", "window", "spacing"):
            assert name in recipe["vars"]
        for name in DIMENSION_VARS:
            recipe["vars"].pop(name, None)
    assert recipes[0] == recipes[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ctfm.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("data")
    segment = make_sample_dataset(root, n_scans=3, shape=(24, 48, 48), seed=0)
    table = pd.read_csv(segment)
    table["split"] = ["train", "val", "test"]
    table.to_csv(segment, index=False)
    table["label"] = [0, 1, 0]
    table.to_csv(root / "classes.csv", index=False)
    return {"segment": segment, "classify": root / "classes.csv"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, data):
    """A tiny denoiser pretrained for one step, in 2D and 3D."""
    root = tmp_path_factory.mktemp("pretrain")
    found = {}
    for dims in (2, 3):
        out = root / f"run{dims}"
        run(
            "fit",
            f"pretrain_{dims}d.yaml",
            root,
            f"vars::datalist={data['segment']}",
            f"vars::output_dir={out}",
            "vars::preset=tiny",
            f"=vars::image_size={TINY_SIZE[dims]}",
            "vars::batch_size=2",
            "vars::warmup_steps=1",
            "trainer::max_steps=1",
        )
        found[dims] = out / "checkpoints" / "last.ckpt"
    return found


def adapter_overrides(task, dims, data, checkpoint, out):
    common = [
        f"vars::checkpoint={checkpoint}",
        f"vars::datalist={data[task]}",
        f"vars::output_dir={out}",
        f"=vars::image_size={TINY_SIZE[dims]}",
        "=vars::spacing=[3.0,3.0,3.0]",
        "=vars::timesteps=[20,200]",
        "vars::batch_size=2",
        "vars::steps_per_epoch=2",
        "vars::max_epochs=1",
    ]
    if task == "segment":
        return [*common, "vars::num_classes=13", "=vars::hidden=[16]", "vars::samples_per_scan=2"]
    return [*common, "vars::head_width=16"]


@pytest.mark.slow
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("task", ["segment", "classify"])
def test_recipe_fits_and_tests_on_a_cpu(tmp_path, data, checkpoints, task, dims):
    out = tmp_path / "run"
    overrides = adapter_overrides(task, dims, data, checkpoints[dims], out)
    run("fit", f"{task}_{dims}d.yaml", tmp_path, *overrides)
    checkpoint = out / "checkpoints" / "last.ckpt"
    state = read_checkpoint(checkpoint)["state_dict"]
    assert read_checkpoint(checkpoint)["global_step"] == 2
    pretrained = read_checkpoint(checkpoints[dims])["state_dict"]
    for key, value in pretrained.items():  # the denoiser inside the adapter is the pretrained one, untouched
        if key.startswith("network."):
            assert torch.equal(state[f"network.features.{key}"], value), key
    run("test", f"{task}_{dims}d.yaml", tmp_path, *overrides, "trainer::logger=false", ckpt_path=str(checkpoint))
    cases = pd.read_csv(out / "test_cases.csv")
    assert list(cases["case_id"]) == ["sample_002", "mean"]
    column = "class_1_dice" if task == "segment" else "probability"
    assert cases[column].between(0, 1).all()


def test_a_checkpoint_of_another_dimension_is_refused_when_the_recipe_is_built(tmp_path, data, checkpoints):
    config = Config()
    config.update(load_recipe(RECIPES / "diffusion" / "segment_3d.yaml"))
    for item in adapter_overrides("segment", 3, data, checkpoints[2], tmp_path):
        config.update(item)
    with pytest.raises(Exception, match="holds a 2D denoiser, but spatial_dims is 3") as caught:
        config.resolve("model")  # sparkwheel names the component and quotes the CTFMError's one line
    causes = [caught.value]
    while causes[-1].__cause__ is not None:
        causes.append(causes[-1].__cause__)
    assert any(isinstance(cause, CTFMError) for cause in causes)
