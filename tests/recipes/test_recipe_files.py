"""Every shipped recipe is one generated, self-contained file: current with its sources, equal to what sparkwheel
composes from them, and runnable as `ctfm recipes copy` prints it from an empty folder outside the repository."""

import os
import shlex
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from lighter import Runner
from recipe_runner import RECIPES
from sparkwheel import Config

from ctfm.cli import main
from ctfm.recipe_build import RECIPES as SOURCES
from ctfm.recipe_build import build_all
from ctfm.recipes import RecipeVarsError, check_vars, list_recipes, recipe_command

REPOSITORY = RECIPES.resolve().parent
CPU = ["trainer::accelerator=cpu", "trainer::devices=1", "trainer::enable_progress_bar=false"]
CPU += ["trainer::max_steps=1", "vars::num_workers=0", "vars::precision=32-true"]
TINY_PRETRAIN = ["=vars::patch_size=[8,32,32]", "vars::patches_per_scan=2", "vars::scans_per_device=2"]
TINY_PRETRAIN += ["vars::steps_per_epoch=1", "vars::max_epochs=1", "vars::warmup_epochs=0"]
TINY_SIZE = {2: "[16,16]", 3: "[8,16,16]"}
CLASSES = ["liver", "spleen"]


def test_the_shipped_recipes_are_current_with_their_sources():
    stale = build_all(RECIPES, check=True)
    assert not stale, f"run `python -m ctfm.recipes build`: {stale} are stale"


def test_every_listed_recipe_is_generated():
    assert set(list_recipes()) == set(SOURCES)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_generated_recipe_is_what_sparkwheel_composes_from_its_sources(name, monkeypatch):
    """The text folding (comments kept) agrees with sparkwheel's own merge of the source, pieces and overlays."""
    monkeypatch.chdir(REPOSITORY)  # the sources name their pieces as lighter_configs/_base/x.yaml
    composed = Config()
    for source in SOURCES[name]:
        composed.update(f"lighter_configs/_base/recipes/{source}")
    generated = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    schema = generated.pop("vars_schema")  # added by the generator: the _base/vars.yaml entry of each var
    assert generated == composed.get()
    assert list(schema) == list(generated["vars"])
    assert "%lighter_configs" not in (RECIPES / f"{name}.yaml").read_text()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny inputs for every recipe: a datalist with splits and labels, a head set, dataset layouts, an encoder."""
    import ctfm
    from ctfm.data.sample import make_sample_dataset
    from ctfm.data.sample_head import make_head_dataset
    from ctfm.data.sample_layouts import make_msd_sample, make_totalsegmentator_sample
    from ctfm.nn import ct_fm_encoder

    root = tmp_path_factory.mktemp("data")
    datalist = make_sample_dataset(root / "scans", n_scans=4, shape=(24, 48, 48), seed=0)
    table = pd.read_csv(datalist)
    table["split"] = ["train", "train", "val", "test"]
    table.to_csv(datalist, index=False)
    table["label"] = [0, 1, 0, 1]
    table.to_csv(root / "scans" / "classes.csv", index=False)
    heads = make_head_dataset(root / "heads", n_scans=4, shape=(12, 48, 48), spacing=(5.0, 2.5, 2.5))
    cq500 = root / "cq500"
    cq500.mkdir()
    for k, image in enumerate(pd.read_csv(heads)["image"][:2]):
        (cq500 / f"CQ500-CT-{k}.nii.gz").symlink_to(heads.parent / image)
    reads = {"name": ["CQ500-CT-0", "CQ500-CT-1"], "Category": ["B1"] * 2, "R1:ICH": [0, 1], "R2:ICH": [0, 0]}
    pd.DataFrame(reads).to_csv(root / "reads.csv", index=False)
    torch.manual_seed(0)
    return {
        "datalist": datalist,
        "classes": root / "scans" / "classes.csv",
        "heads": heads,
        "cq500": cq500,
        "reads": root / "reads.csv",
        "ts": make_totalsegmentator_sample(root / "ts", shape=(16, 32, 32), classes=CLASSES),
        "msd": make_msd_sample(root / "Task03_Liver", n_cases=3, shape=(16, 32, 32)),
        "encoder": ctfm.save_pretrained(ct_fm_encoder(init_filters=4), root / "encoder"),
    }


def tiny(name: str, data: dict, denoiser) -> list[str]:
    """The overrides that shrink recipe ``name`` to one CPU step on the tiny ``data``."""
    if name in ("pretrain", "released_code", "quickstart"):
        return [f"vars::datalist={data['datalist']}", "vars::init_filters=4", *TINY_PRETRAIN]
    if name == "distill":
        return [f"vars::datalist={data['datalist']}", f"vars::teacher={data['encoder']}", *TINY_PRETRAIN]
    if name == "embed":  # writes a table, not a run folder
        return [f"vars::datalist={data['datalist']}", f"vars::model={data['encoder']}", "=vars::patch_size=[8,32,32]"]
    classify = ["vars::weights=none", "vars::init_filters=4", "=vars::roi_size=[8,32,32]", "vars::batch_size=2"]
    if name in ("classification", "head_ct_triage"):
        return [f"vars::datalist={data['heads']}", *classify, "vars::max_epochs=1"]
    if name == "cq500":
        return [f"vars::cq500_reads={data['reads']}", f"vars::cq500_images={data['cq500']}", *classify]
    segment = ["vars::weights=none", "vars::init_filters=4", "=vars::patch_size=[16,32,32]", "vars::val_batches=0"]
    if name == "totalsegmentator":
        return [f"vars::data_dir={data['ts']}", f"=vars::classes={CLASSES}".replace("'", ""), *segment]
    if name == "msd_tumor":
        return [f"vars::data_dir={data['msd']}", *segment]
    task, dims = name.removeprefix("diffusion/").rsplit("_", 1)
    size = TINY_SIZE[int(dims[0])]
    common = [f"=vars::image_size={size}", "vars::batch_size=2", "vars::steps_per_epoch=1", "vars::max_epochs=1"]
    if task == "pretrain":
        return [f"vars::datalist={data['datalist']}", "vars::preset=tiny", "vars::warmup_steps=1", *common]
    if task == "low_dose":
        low_dose = ["vars::preset=tiny", "vars::warmup_steps=1", "vars::steps=2", "vars::val_batches=0"]
        return [f"vars::datalist={data['datalist']}", *low_dose, *common]
    adapter = [f"vars::checkpoint={denoiser(int(dims[0]))}", "=vars::spacing=[3.0,3.0,3.0]", "=vars::timesteps=[20]"]
    adapter += ["vars::val_batches=0", *common]
    if task == "segment":
        return [f"vars::datalist={data['datalist']}", "vars::num_classes=13", "=vars::hidden=[8]", *adapter]
    return [f"vars::datalist={data['classes']}", "vars::head_width=8", *adapter]


def copy_and_run(name: str, folder: Path, overrides: list[str]) -> Path:
    """`ctfm recipes copy NAME my` in an empty ``folder``, then the command it printed with ``overrides`` added."""
    folder.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(folder)
    try:
        assert main(["recipes", "copy", name, "my"]) == 0
        copied = sorted(p.name for p in folder.rglob("*") if p.is_file())
        assert copied == [f"{Path(name).name}.yaml"]
        words = shlex.split(recipe_command(f"my/{Path(name).name}.yaml"))
        assert words[:1] == ["lighter"] and Path(words[2]).is_file()
        flags = {i for i, word in enumerate(words) if word.startswith("--")}  # --ckpt_path P: a later run's
        printed = [word for i, word in enumerate(words) if i > 2 and i not in flags and i - 1 not in flags]
        output = "vars::out=run/embeddings.parquet" if name == "embed" else "vars::output_dir=run"
        Runner().run(words[1], [words[2], *printed, *overrides, *CPU, output])
    finally:
        os.chdir(here)
    return folder / "run"


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory, data):
    """A tiny diffusion denoiser pretrained for one step by the copied pretrain recipe, per dimension."""
    found: dict[int, Path] = {}

    def checkpoint(dims: int) -> Path:
        if dims not in found:
            name = f"diffusion/pretrain_{dims}d"
            run = copy_and_run(name, tmp_path_factory.mktemp("denoiser"), tiny(name, data, None))
            found[dims] = run / "checkpoints" / "last.ckpt"
        return found[dims]

    return checkpoint


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_a_recipe_copied_alone_into_an_empty_folder_runs_as_printed(name, tmp_path, data, denoiser):
    assert REPOSITORY not in tmp_path.parents
    run = copy_and_run(name, tmp_path / "project", tiny(name, data, denoiser))
    if name == "embed":
        assert any(run.glob("embeddings.parquet/*.parquet"))
    elif name == "cq500":
        assert (run / "predictions.csv").is_file()
    else:
        assert (run / "checkpoints" / "last.ckpt").is_file()


def test_a_shipped_recipe_runs_by_its_absolute_path_from_another_folder(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = str((RECIPES / "quickstart.yaml").resolve())
    Runner().run("fit", [recipe, *tiny("quickstart", data, None), *CPU, "vars::output_dir=run"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_recipes_copy_writes_nothing_when_the_target_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "pretrain.yaml").write_text("mine")
    assert main(["recipes", "copy", "pretrain", "my"]) == 1
    assert "exists already" in capsys.readouterr().err
    assert (tmp_path / "my" / "pretrain.yaml").read_text() == "mine"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_recipe_checks_its_vars_first_and_its_defaults_fit(name):
    config = Config().update(str(RECIPES / f"{name}.yaml"))
    model = config.get("model")
    assert list(model)[:2] == ["_target_", "_disabled_"]  # sparkwheel resolves the check before the rest
    assert model["_disabled_"]["_target_"] == "ctfm.recipes.check_vars"
    assert check_vars(config.resolve("vars"), config.get("vars_schema")) is False


@pytest.mark.parametrize(
    "override, message",
    [
        ("vars::lr=1e-4", "vars::lr='1e-4': expected float > 0 (YAML reads 1e-4 as text"),
        ("vars::patch_size=16", "vars::patch_size=16: expected list[int >= 1] (a list: replace it"),
        ("vars::lrr=0.1", "vars::lrr is not a var of this recipe (did you mean vars::lr?)"),
        ("vars::max_epochs=-3", "vars::max_epochs=-3: expected int >= 1"),
        ("vars::max_epochs=true", "vars::max_epochs=True: expected int >= 1"),
        ("vars::precision=null", "vars::precision=None: expected str | int"),
        ("=vars::spacing=[3.0,0,1.0]", "vars::spacing=[3.0, 0, 1.0]: expected list[float > 0] | null"),
    ],
)
def test_a_bad_var_stops_the_run_before_anything_is_built_in_one_line(override, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeVarsError) as raised:
        Runner().run("fit", [str(RECIPES / "pretrain.yaml"), "vars::datalist=d.csv", override])
    assert str(raised.value.code).startswith(f"ctfm: {message}")
    assert "\n" not in str(raised.value.code) and raised.value.code != 0
    assert not (tmp_path / "runs").exists()


def test_var_specs():
    schema = {"a": "int >= 0 | float in [0, 1]", "b": "choice(tiny, small) | null", "c": "list[list[float]]"}
    assert check_vars({"a": 3, "b": None, "c": [[1, 2.5]]}, schema) is False
    assert check_vars({"a": 0.5, "b": "tiny", "c": []}, schema) is False
    for bad in ({"a": 1.5}, {"a": -1}, {"b": "big"}, {"c": [1.0]}, {"a": "1"}):
        with pytest.raises(RecipeVarsError):
            check_vars(bad, schema)


def test_quiet_lightning_drops_lightnings_banners_and_keeps_warnings_and_ctfm_lines():
    import logging

    import pytorch_lightning as pl
    from pytorch_lightning.utilities import rank_zero_info

    import ctfm.tasks.finetune
    from ctfm.tasks.quiet import QuietLightning

    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("pytorch_lightning")
    logger.addHandler(handler)
    try:
        quiet = QuietLightning()
        pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)  # "GPU available: ..." and a tip
        exec(
            compile("rank_zero_info('ctfm says')", ctfm.tasks.finetune.__file__, "exec"),
            {"rank_zero_info": rank_zero_info},
        )
        logging.getLogger("pytorch_lightning.trainer").warning("a warning")
        assert seen == ["ctfm says", "a warning"]
        quiet.teardown(None, None, "fit")
        pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
        assert any("GPU available" in line for line in seen)
    finally:
        logger.removeHandler(handler)
