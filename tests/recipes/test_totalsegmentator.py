"""totalsegmentator.yaml: the published settings, and fit / validate / test / predict on a tiny dataset."""

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.recipes import load_recipe, run_recipe

RECIPE = RECIPES / "totalsegmentator.yaml"
#: The vars every segmentation recipe has (the issue's list), plus spacing.
SEGMENTATION_VARS = {
    "data_dir",
    "weights",
    "classes",
    "fewshot",
    "freeze_encoder",
    "patch_size",
    "init_filters",
    "batch_size",
    "max_epochs",
    "lr",
    "num_workers",
    "precision",
    "output_dir",
    "spacing",
}
#: Vars the shared _base pieces read.
BASE_VARS = {"weight_decay", "warmup_epochs", "accumulate_grad_batches", "checkpoint_every_n_epochs"}
BASE_VARS |= {"checkpoint_every_n_minutes", "val_batches"}
CLASSES = ["liver", "spleen", "kidney_left"]


def test_the_recipe_has_the_segmentation_vars_and_the_published_settings(tmp_path):
    from ctfm.data.sample_layouts import make_totalsegmentator_sample

    assert set(load_recipe(RECIPE)["vars"]) == SEGMENTATION_VARS | BASE_VARS
    data = make_totalsegmentator_sample(tmp_path / "ts", splits=("train",), shape=(16, 32, 32), classes=CLASSES)
    config = Config().update(load_recipe(RECIPE)).update(f"vars::data_dir={data}").update("vars::weights=none")
    v = config.get("vars")
    assert v["patch_size"] == [96, 160, 160] and v["spacing"] is None and v["lr"] == 2e-4
    assert v["max_epochs"] == 300 and v["weight_decay"] == 1e-5
    model = config.resolve("model")
    assert model.network.out_channels == 118 and model.network.dsdepth == 4 and model.class_names[5] == "liver"
    assert model.inferer.overlap == 0.625 and model.inferer.mode == "gaussian"
    assert tuple(model.inferer.roi_size) == (96, 160, 160)
    assert type(model.optimizer).__name__ == "AdamW" and model.optimizer.defaults["weight_decay"] == 1e-5
    assert type(model.scheduler).__name__ == "WarmupCosineSchedule"
    assert model.criterion.weight_mode == "exp" and model.criterion.loss.dice.softmax


def _run(stage, run_dir, data, *overrides, ckpt_path=None):
    inputs = [RECIPE, f"vars::data_dir={data}", f"vars::output_dir={run_dir}", "vars::weights=none"]
    inputs += ["vars::init_filters=4", "=vars::patch_size=[16,32,32]", "vars::precision=32-true"]
    inputs += ["vars::num_workers=0", "vars::max_epochs=1", f"=vars::classes={json.dumps(CLASSES)}"]
    inputs += ["trainer::max_steps=2", "trainer::accelerator=cpu", "trainer::enable_progress_bar=false"]
    inputs += ["trainer::sync_batchnorm=false", "trainer::enable_model_summary=false", *overrides]
    cwd = os.getcwd()
    os.chdir(run_dir)
    try:
        run_recipe(stage, inputs, **({"ckpt_path": str(ckpt_path)} if ckpt_path else {}))
    finally:
        os.chdir(cwd)


@pytest.mark.slow
def test_fit_validate_test_predict_on_the_published_layout(tmp_path):
    from ctfm.data.sample_layouts import make_totalsegmentator_sample

    data = make_totalsegmentator_sample(tmp_path / "ts", shape=(24, 64, 64), classes=CLASSES)
    run = tmp_path / "run"
    run.mkdir()
    _run("fit", run, data)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    for stage in ("validate", "test"):
        _run(stage, run, data, ckpt_path=last)
    cases = pd.read_csv(run / "test_cases.csv")
    assert list(cases["image_id"]) == ["s0003", "mean"]
    assert list(cases.columns) == ["image_id", "liver_dice", "spleen_dice", "kidney_left_dice"]
    assert cases.drop(columns="image_id").apply(lambda c: c.between(0, 1)).all().all()

    _run("predict", run, data, "data::predict_split=all", ckpt_path=last)
    for image_id in ("s0000", "s0001", "s0002", "s0003"):
        ct = nib.load(data / image_id / "ct.nii.gz")
        prediction = nib.load(run / "predictions" / f"{image_id}.nii.gz")
        assert prediction.shape == ct.shape
        assert np.allclose(prediction.affine, ct.affine, atol=1e-4)
        values = np.asarray(prediction.dataobj)
        assert np.issubdtype(values.dtype, np.integer) and set(np.unique(values)) <= {0, 1, 2, 3}
        sidecar = json.loads(Path(run / "predictions" / f"{image_id}.json").read_text())
        assert sidecar["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left"}
