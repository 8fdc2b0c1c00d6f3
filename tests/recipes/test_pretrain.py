"""The Lighter recipes: they resolve with the published defaults, train, export, load, and resume."""

import pytest
import torch
from recipe_runner import RECIPES, fit_tiny
from sparkwheel import Config


def resolved(*inputs):
    config = Config()
    for item in inputs:
        config.update(str(item))
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
    config = resolved(RECIPES / "pretrain.yaml", RECIPES / "released_code.yaml")
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
    from ctfm.export import read_checkpoint

    fit_tiny(tmp_path, datalist)
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = read_checkpoint(last)
    assert first["global_step"] == 2 and first["epoch"] == 0

    # A killed run resumes from its last checkpoint: the step count and the schedule continue.
    fit_tiny(tmp_path, datalist, "vars::max_epochs=2", ckpt_path=str(last))
    second = read_checkpoint(last)
    assert second["global_step"] == 4 and second["epoch"] == 1
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


def test_exported_full_size_encoder_has_the_published_keys(tmp_path):
    """A checkpoint of the full recipe exports to the exact public tensor names."""
    import ctfm
    from ctfm.export import encoder_from_checkpoint

    config = resolved(RECIPES / "pretrain.yaml", f"vars::datalist={tmp_path / 'd.csv'}")
    model = config.resolve("model")
    path = tmp_path / "full.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": config.get()}}, path)
    encoder = encoder_from_checkpoint(path)
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
