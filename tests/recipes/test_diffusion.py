"""The diffusion pretraining recipes: 2D and 3D share everything but their dimension vars, and both train."""

import os

import pytest
import torch
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.hub.checkpoint import read_checkpoint
from ctfm.recipes import load_recipe, run_recipe

DIMENSION_VARS = {"spatial_dims", "image_size", "batch_size", "preset", "output_dir"}
TINY_SIZE = {2: "[32,32]", 3: "[16,32,32]"}


def resolved(*inputs):
    config = Config()
    for item in inputs:
        config.update(load_recipe(item) if not isinstance(item, str) else item)
    return config


def test_2d_and_3d_recipes_differ_only_in_dimension_vars():
    recipes = [load_recipe(RECIPES / "diffusion" / f"pretrain_{d}d.yaml") for d in (2, 3)]
    for recipe in recipes:
        for name in ("datalist", "preset", "image_size", "batch_size", "max_epochs", "num_workers", "precision"):
            assert name in recipe["vars"]
        for name in DIMENSION_VARS:
            recipe["vars"].pop(name)
    assert recipes[0] == recipes[1]


def test_2d_recipe_defaults_are_lctfound(tmp_path):
    config = resolved(RECIPES / "diffusion" / "pretrain_2d.yaml", f"vars::datalist={tmp_path / 'd.csv'}")
    assert config.get("vars::image_size") == [256, 256] and config.get("vars::preset") == "lctfound"
    with torch.device("meta"):  # counts parameters without allocating 1.1 GB
        network = config.resolve("model::network")
    assert network.spatial_dims == 2
    assert tuple(network.unet.block_out_channels) == (64, 128, 256, 512, 1024)
    assert sum(p.numel() for p in network.parameters()) == 277_858_561
    config.update("vars::preset=tiny")
    model = config.resolve("model")
    scheduler = model.noise_scheduler
    assert scheduler.num_train_timesteps == 1000
    torch.testing.assert_close(scheduler.betas[[0, -1]], torch.tensor([1e-4, 2e-2]))
    assert model.optimizer.defaults["lr"] == 1e-4 and model.gradient_clip == 1.0 and model.condition_dropout == 0.05
    assert model.scheduler_interval == "step" and model.ema_network is None


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    from ctfm.data.sample import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("data"), n_scans=2, shape=(24, 64, 64), seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_recipe_trains_three_steps_on_a_cpu(tmp_path, datalist, spatial_dims):
    overrides = [
        f"vars::datalist={datalist}",
        f"vars::output_dir={tmp_path / 'run'}",
        "vars::preset=tiny",
        f"=vars::image_size={TINY_SIZE[spatial_dims]}",
        "vars::batch_size=2",
        "vars::num_workers=0",
        "vars::precision=32-true",
        "vars::ema_decay=0.9",
        "vars::warmup_steps=1",
        "trainer::max_steps=3",
        "trainer::accelerator=cpu",
        "trainer::enable_progress_bar=false",
    ]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_recipe("fit", [RECIPES / "diffusion" / f"pretrain_{spatial_dims}d.yaml", *overrides])
    finally:
        os.chdir(cwd)
    checkpoint = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == 3
    state = checkpoint["state_dict"]
    conv = next(v for k, v in state.items() if k.startswith("network.unet.conv_in") and k.endswith("weight"))
    assert conv.ndim == 2 + spatial_dims
    # The EMA copy is saved and has moved away from the live weights.
    ema = state["ema_network.module.unet.conv_in.conv.weight"]
    assert ema.shape == conv.shape and not torch.equal(ema, conv)


@pytest.mark.slow
def test_recipe_trains_with_captions_and_the_checkpoint_samples_from_one(tmp_path, datalist, tiny_bert):
    from ctfm.analysis.diffusion import sample_to_folder
    from ctfm.data.datalist import read_datalist

    captioned = tmp_path / "captioned.csv"
    table = read_datalist(datalist)  # absolute paths, as this CSV lives elsewhere
    table["caption"] = ["chest ct, lung nodule", None][: len(table)]
    table.to_csv(captioned, index=False)
    overrides = [
        f"vars::datalist={captioned}", f"vars::output_dir={tmp_path / 'run'}", "vars::preset=tiny",
        f"=vars::image_size={TINY_SIZE[2]}", "vars::batch_size=2", "vars::num_workers=0", "vars::precision=32-true",
        "vars::warmup_steps=1", f"vars::text_encoder={tiny_bert}", "vars::text_column=caption",
        "trainer::max_steps=2", "trainer::accelerator=cpu", "trainer::enable_progress_bar=false",
    ]  # fmt: skip
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run_recipe("fit", [RECIPES / "diffusion" / "pretrain_2d.yaml", *overrides])
    finally:
        os.chdir(cwd)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert any(k.startswith("network.text_projection") for k in read_checkpoint(checkpoint)["state_dict"])
    written = sample_to_folder(checkpoint, tmp_path / "samples", window=(1500, -500), text="chest ct", n=2, steps=2)
    assert [p.name for p in written] == ["sample_000.nii.gz", "sample_001.nii.gz", "samples.png"]


def test_a_missing_caption_column_is_named(tmp_path, datalist):
    from ctfm.data.diffusion import DiffusionDataModule
    from ctfm.errors import CTFMError

    module = DiffusionDataModule(datalist, 2, (32, 32), cache_dir=tmp_path / "cache", text_column="caption")
    with pytest.raises(CTFMError, match=r"no column 'caption' of captions \(vars::text_column\)"):
        module.setup("fit")
