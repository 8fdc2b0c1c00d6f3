"""The Lighter recipes: they resolve with the published defaults, train, export, load, and resume."""

import copy
from pathlib import Path

import pytest
import torch
from recipe_runner import RECIPES, fit_tiny
from sparkwheel import Config

from ctfm.recipes import load_recipe

BEFORE_BASE = Path(__file__).parent / "data" / "pretrain_before_base.yaml"


def resolved(*inputs):
    """The config lighter builds from ``inputs``, with recipe files read wherever the tests run from."""
    config = Config()
    for item in inputs:
        config.update(load_recipe(item) if isinstance(item, Path) else item)
    return config


def test_pretrain_recipe_defaults_are_the_paper(tmp_path):
    config = resolved(RECIPES / "pretrain.yaml", f"vars::datalist={tmp_path / 'datalist.csv'}")
    v = config.get("vars")
    assert v["patch_size"] == [24, 128, 128] and v["spacing"] == [3.0, 1.0, 1.0]
    assert v["patches_per_scan"] == 20 and v["scans_per_device"] * 4 * v["accumulate_grad_batches"] == 16
    assert (v["max_epochs"], v["steps_per_epoch"], v["warmup_epochs"]) == (500, 500, 10)
    model = config.resolve("model")
    assert sum(p.numel() for p in model.network.encoder.parameters()) == 77_760_992
    head = [m for m in model.network.head if isinstance(m, torch.nn.Linear)]
    assert [(h.in_features, h.out_features) for h in head] == [(512, 256), (256, 128)]
    assert model.criterion.temperature == 0.1 and model.criterion.symmetric
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "AdamW"
    assert optimizer.defaults["lr"] == 1e-4 and optimizer.defaults["weight_decay"] == 1e-6
    # The projection head is optimised too, not only the encoder.
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.network.parameters()))
    trainer = config.get("trainer")
    assert trainer["sync_batchnorm"] is True and trainer["precision"] == "@vars::precision"
    assert v["precision"] == "bf16-mixed"


def test_released_code_override(tmp_path):
    config = resolved(RECIPES / "released_code.yaml")
    assert config.get("vars::patch_size") == [32, 128, 128]
    assert config.get("vars::patches_per_scan") == 15
    assert config.resolve("model::criterion").symmetric is False


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    from ctfm.data.sample import make_sample_dataset

    return make_sample_dataset(tmp_path_factory.mktemp("data"), n_scans=3, shape=(24, 80, 80), seed=0)


@pytest.mark.slow
def test_fit_export_load_and_resume(tmp_path, datalist):
    import ctfm
    from ctfm.hub.checkpoint import read_checkpoint

    fit_tiny(tmp_path, datalist)
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = read_checkpoint(last)
    assert first["global_step"] == 2 and first["epoch"] == 1  # written at the end of training, after epoch 0
    assert not list(last.parent.glob("last-v*.ckpt"))  # both checkpoint callbacks keep the one last.ckpt

    # A killed run resumes from its last checkpoint: the step count and the schedule continue.
    fit_tiny(tmp_path, datalist, "vars::max_epochs=2", ckpt_path=str(last))
    second = read_checkpoint(last)
    assert second["global_step"] == 4 and second["epoch"] == 2
    assert second["lr_schedulers"][0]["last_epoch"] == first["lr_schedulers"][0]["last_epoch"] + 1

    encoder_dir = ctfm.export_encoder(last, tmp_path / "encoder")
    model = ctfm.load(encoder_dir)
    trained = {
        k[len("network.encoder.") :]: v for k, v in second["state_dict"].items() if k.startswith("network.encoder.")
    }
    assert set(model.state_dict()) == set(trained)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[key])
    assert ctfm.embed(model, torch.rand(8, 32, 32), patch_size=(8, 32, 32)).shape == (64,)


@pytest.mark.slow
def test_bf16_mixed_on_a_cpu_trains_finite_weights(tmp_path, datalist, monkeypatch):
    """The user's report: bf16-mixed (the recipe default) on a CPU with 16-slice patches gave NaN weights.

    16-slice patches give the encoder a 2-voxel-deep level, where oneDNN's bf16 weight gradient is corrupt (see
    tests/tasks/test_simclr.py); the step must see Lightning's autocast, turn it off, and leave no NaN in last.ckpt.
    """
    from ctfm.hub.checkpoint import read_checkpoint
    from ctfm.tasks import base

    seen = []
    detect = base._cpu_autocast_enabled
    monkeypatch.setattr(base, "_cpu_autocast_enabled", lambda: seen.append(detect()) or seen[-1])
    fit_tiny(tmp_path, datalist, "vars::precision=bf16-mixed", "=vars::patch_size=[16,32,32]", "vars::num_workers=2")
    assert seen and all(seen)
    state = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["state_dict"]
    assert not [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]


@pytest.mark.slow
def test_the_recipe_trains_with_views_made_on_the_device(tmp_path, datalist, monkeypatch):
    """vars::views_on=device on a CPU: workers read raw patches, the module makes every step's views."""
    from ctfm.hub.checkpoint import read_checkpoint
    from ctfm.transforms.device_views import DeviceViews

    made = []
    call = DeviceViews.__call__
    monkeypatch.setattr(DeviceViews, "__call__", lambda self, *a: made.append(a[0].dtype) or call(self, *a))
    fit_tiny(tmp_path, datalist, "vars::views_on=device", "vars::precision=32-true", "vars::num_workers=1")
    assert made == [torch.uint16, torch.uint16]  # two steps, each from the cache's raw codes
    state = read_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())


def test_a_fit_raises_none_of_the_warnings_whose_cause_is_ours(tmp_path, datalist):
    """The quickstart buried its steps under Lightning's batch-size guess and a validation_step without data."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_tiny(tmp_path, datalist, "trainer::max_steps=1")
    ours = [
        str(w.message)
        for w in caught
        if "infer the `batch_size`" in str(w.message) or "validation_step" in str(w.message)
    ]
    assert not ours


def test_exported_full_size_encoder_has_the_published_keys(tmp_path):
    """A checkpoint of the full recipe exports to the exact public tensor names."""
    import ctfm
    from ctfm.export import network_from_checkpoint

    config = resolved(RECIPES / "pretrain.yaml", f"vars::datalist={tmp_path / 'd.csv'}")
    model = config.resolve("model")
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": config.get()}}, path)
    encoder = network_from_checkpoint(path)
    keys = list(encoder.state_dict())
    assert len(keys) == 161 and keys[0].startswith("conv_init.")
    assert all(k.split(".")[0] in ("conv_init", "layers") for k in keys)
    out = ctfm.save_pretrained(encoder, tmp_path / "encoder")
    assert sum(p.numel() for p in ctfm.load(out).parameters()) == 77_760_992


@pytest.mark.parametrize(
    "override, message",
    [(None, "vars::datalist"), ("vars::patch_size=[16,64,64]", "=vars::patch_size")],
)
def test_recipe_mistakes_fail_early_with_the_fix(tmp_path, override, message):
    inputs = [RECIPES / "pretrain.yaml"]
    if override:
        inputs += [f"vars::datalist={tmp_path / 'datalist.csv'}", override]
    with pytest.raises(Exception) as raised:
        resolved(*inputs).resolve("data")
    assert message in str(raised.value)


def test_pretrain_built_from_base_pieces_is_the_recipe_it_was(tmp_path):
    """pretrain.yaml composes _base/ pieces now; it must still expand to exactly the self-contained recipe it was."""
    datalist = f"vars::datalist={tmp_path / 'datalist.csv'}"
    old = Config().update(str(BEFORE_BASE)).update(datalist)
    new = resolved(RECIPES / "pretrain.yaml", datalist)
    expected = copy.deepcopy(old.get())
    expected["model"]["_target_"] = "ctfm.tasks.IntraSampleSimCLR"  # the module moved; ctfm.ssl still resolves
    # Added since: a quiet-logs callback, last.ckpt refreshed by time, bounded validation (vars below), and where
    # the views are made (issue 23).
    added = {"checkpoint_every_n_minutes": 30, "val_batches": 1.0, "views_on": "auto"}
    expected["data"]["views_on"] = "@vars::views_on"
    expected["model"]["device_views"] = {"_target_": "ctfm.transforms.device_views.DeviceViews", "seed": "@vars::seed"}
    assert {k: v for k, v in new.get("vars").items() if k not in added} == expected.pop("vars")
    assert {k: new.get("vars")[k] for k in added} == added
    got = copy.deepcopy(new.get())
    assert got["model"].pop("_disabled_")["_target_"] == "ctfm.recipes.check_vars"  # the vars check, added since
    assert got["model"] == expected["model"] and got["data"] == expected["data"]
    old_model, new_model = old.resolve("model"), new.resolve("model")
    assert type(old_model) is type(new_model)
    assert str(old_model.network) == str(new_model.network)
    old_data, new_data = old.resolve("data"), new.resolve("data")
    keys = ("patch_size", "patches_per_scan", "scans_per_device", "num_workers", "steps_per_epoch", "seed")
    assert {k: getattr(old_data, k) for k in keys} == {k: getattr(new_data, k) for k in keys}
    assert old_data.cache == new_data.cache


def test_quickstart_into_an_earlier_quickstart_stops_unless_overwrite(tmp_path, monkeypatch, capsys):
    """Training into an earlier run's folder would leave its last.ckpt and encoder in place of the new ones."""
    import ctfm.quickstart
    from ctfm.cli import main

    (tmp_path / "encoder").mkdir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"earlier run")
    assert main(["quickstart", "--out", str(tmp_path)]) == 1
    assert "exists already from an earlier run; choose another --out or pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == b"earlier run"
    assert not (tmp_path / "data").exists()  # stopped before any work

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ctfm.quickstart, "run_recipe", stop)
    with pytest.raises(KeyboardInterrupt):
        main(["quickstart", "--out", str(tmp_path), "--overwrite"])
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "encoder").exists()
