"""A checkpoint, a prototypes file and a saved query are data: nothing read from them imports or runs code.

Each entry point that reads a stored lighter config (export, diffusion sampling, the diffusion adapters, cold
diffusion) is given a tampered checkpoint: an ``os.system`` target and a ``$__import__`` expression. No side effect
may happen and the CLI exits 1 with one line naming the file and the key. Genuine checkpoints of the recipes still
export, sample and load.
"""

import copy
import json

import numpy as np
import pytest
import torch
from recipe_runner import RECIPES
from sparkwheel import Config

import ctfm
from ctfm.cli import main
from ctfm.errors import CTFMError, ModelLoadError
from ctfm.hub.safe_config import rebuild
from ctfm.recipes import load_recipe

CLASSES = ["liver", "spleen", "kidney_left"]


def _payload(tmp_path):
    return f"touch {tmp_path / 'PWNED'}"


def _attacks(tmp_path, expression_at):
    """{attack: (where in the config, what is put there, what the refusal must say)}."""
    command = _payload(tmp_path)
    return {
        "target": (
            ("model", "network"),
            {"_target_": "os.system", "command": command},
            ["model::network::_target_ 'os.system' is not an allowed network class"],
        ),
        "expression": (
            expression_at,
            f"$__import__('os').system({command!r})",
            ["::".join(expression_at) + ' "$__import__', "is an expression"],
        ),
    }


def _tamper(path, tmp_path, attack, expression_at=("vars", "preset")):
    """A copy of the checkpoint at ``path`` with the attack in its config, and the expected message fragments."""
    where, value, message = _attacks(tmp_path, expression_at)[attack]
    checkpoint = torch.load(path, weights_only=True)
    node = checkpoint["hyper_parameters"]["config"]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    tampered = tmp_path / "tampered.ckpt"
    torch.save(checkpoint, tampered)
    return tampered, [f"{tampered}: {message[0]}", *message[1:]]


def _diffusion_checkpoint(path, spatial_dims=2):
    """A pretraining checkpoint as lighter writes it (the recipe's config and the module's state), untrained."""
    config = Config().update(load_recipe(RECIPES / "diffusion" / f"pretrain_{spatial_dims}d.yaml"))
    config.update("vars::preset=tiny")
    model = config.resolve("model")
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": config.get()}}, path)
    return path


def _segmentation_checkpoint(path, store_class_names=True):
    """A totalsegmentator.yaml checkpoint at a tiny width, saved through the module's own checkpoint hook."""
    config = Config().update(load_recipe(RECIPES / "totalsegmentator.yaml"))
    for override in ("vars::weights=none", "vars::init_filters=4", f"=vars::classes={json.dumps(CLASSES)}"):
        config.update(override)
    torch.manual_seed(0)
    model = config.resolve("model")
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": {"config": config.get()}}
    if store_class_names:
        model.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path


def _one_line_error(capsys, *fragments):
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    for fragment in fragments:
        assert fragment in error, error


@pytest.fixture(scope="module")
def diffusion_checkpoint(tmp_path_factory):
    return _diffusion_checkpoint(tmp_path_factory.mktemp("diffusion") / "last.ckpt")


@pytest.fixture(scope="module")
def segmentation_checkpoint(tmp_path_factory):
    return _segmentation_checkpoint(tmp_path_factory.mktemp("segmentation") / "last.ckpt")


@pytest.mark.parametrize("attack", ["target", "expression"])
def test_export_of_a_tampered_checkpoint_runs_nothing(segmentation_checkpoint, tmp_path, capsys, attack):
    at = ("model", "network", "init_filters")
    tampered, message = _tamper(segmentation_checkpoint, tmp_path, attack, expression_at=at)
    assert main(["export", str(tampered), str(tmp_path / "out")]) == 1
    _one_line_error(capsys, *message)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("attack", ["target", "expression"])
def test_diffusion_sampling_of_a_tampered_checkpoint_runs_nothing(diffusion_checkpoint, tmp_path, capsys, attack):
    tampered, message = _tamper(diffusion_checkpoint, tmp_path, attack)
    args = ["diffusion", "sample", str(tampered), "--n", "1", "--steps", "2", "--size", "16", "16"]
    assert main([*args, "--out", str(tmp_path / "samples")]) == 1
    _one_line_error(capsys, *message)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "samples").exists()


@pytest.mark.parametrize("attack", ["target", "expression"])
def test_adapters_and_cold_diffusion_refuse_a_tampered_prior(diffusion_checkpoint, tmp_path, attack):
    from ctfm.hub.checkpoint import pretrained_denoiser
    from ctfm.nn.diffusion import diffusion_unet
    from ctfm.tasks.cold_diffusion import ColdDiffusion

    tampered, message = _tamper(diffusion_checkpoint, tmp_path, attack)
    with pytest.raises(ModelLoadError) as refused:
        pretrained_denoiser(str(tampered), spatial_dims=2)
    assert all(fragment in str(refused.value) for fragment in message)
    with pytest.raises(ModelLoadError, match="is not an allowed network class|is an expression"):
        pretrained_denoiser(str(tampered), spatial_dims=2, ema=True)
    with pytest.raises(ModelLoadError, match="is not an allowed network class|is an expression"):
        ColdDiffusion(diffusion_unet(2, "tiny"), pretrained=str(tampered))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "value, problem",
    [
        ("%lighter_configs/_base/encoder.yaml::encoder", "is a raw reference"),
        ({"_target_": "ctfm.nn.ct_fm_encoder", "_mode_": "callable"}, "model::network::_mode_ is not allowed"),
        ({"_target_": "ctfm.nn.ct_fm_encoder", "_requires_": "$1"}, "model::network::_requires_ is not allowed"),
        ({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}, "'torch.nn.Linear' is not an allowed"),
        ({"_target_": "ctfm.nn.ct_fm_encoder", "init_filters": "$@vars::n.bit_length()"}, "is an expression"),
        ({"_target_": "ctfm.nn.ct_fm_encoder", "init_filters": "@model::network"}, "refers to itself"),
        ({"_target_": "ctfm.nn.ct_fm_encoder", "init_filters": "@vars::missing"}, "vars::missing is referenced but"),
    ],
)
def test_the_rebuilder_refuses_anything_but_data_and_allowed_networks(value, problem):
    config = {"vars": {"n": 4}, "model": {"network": value}}
    with pytest.raises(ModelLoadError, match=f"^run/last.ckpt: .*{problem}"):
        rebuild(config, "model::network", source="run/last.ckpt")


def test_the_rebuilder_computes_the_arithmetic_recipes_store():
    config = {
        "vars": {"init_filters": 4, "names": ["background", "a", "b"]},
        "model": {
            "network": {
                "_target_": "ctfm.nn.ContrastiveNetwork",
                "encoder": {"_target_": "ctfm.nn.ct_fm_encoder", "init_filters": "@vars::init_filters"},
                "head": {
                    "_target_": "ctfm.nn.ProjectionHead",
                    "in_features": "$@vars::init_filters * 16",
                    "out_features": "$len(@vars::names) - 1",
                },
            }
        },
    }
    network = rebuild(config, "model::network", source="x")
    assert network.head[0].in_features == 64 and network.head[2].out_features == 2
    assert network.encoder.conv_init.out_channels == 4


def test_genuine_diffusion_checkpoints_still_sample_and_load(diffusion_checkpoint, tmp_path):
    from ctfm.hub.checkpoint import load_denoiser

    network, variables = load_denoiser(diffusion_checkpoint, spatial_dims=2)
    assert network.spatial_dims == 2 and variables == {"image_size": [256, 256], "spacing": [3.0, 1.0, 1.0]}
    args = ["diffusion", "sample", str(diffusion_checkpoint), "--n", "1", "--steps", "2", "--size", "16", "16"]
    assert main([*args, "--out", str(tmp_path / "samples")]) == 0
    assert (tmp_path / "samples" / "sample_000.nii.gz").is_file()


def test_diffusion_sampling_refuses_nan_weights_and_no_steps(diffusion_checkpoint, tmp_path, capsys):
    args = ["diffusion", "sample", "--n", "1", "--size", "16", "16", "--out", str(tmp_path / "samples")]
    for steps in ("0", "-3"):
        assert main([*args[:2], str(diffusion_checkpoint), *args[2:], "--steps", steps]) == 1
        _one_line_error(capsys, f"--steps must be at least 1, got {steps}")
    checkpoint = torch.load(diffusion_checkpoint, weights_only=True)
    checkpoint["state_dict"]["network.unet.conv_in.conv.weight"].fill_(float("nan"))
    damaged = tmp_path / "nan.ckpt"
    torch.save(checkpoint, damaged)
    assert main([*args[:2], str(damaged), *args[2:], "--steps", "2"]) == 1
    _one_line_error(capsys, f"{damaged}: 1 of ", "hold NaN or inf values (unet.conv_in.conv.weight)")
    assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("stored", [True, False], ids=["names-in-checkpoint", "names-from-config"])
def test_an_exported_segmentation_checkpoint_names_its_classes(tmp_path, sample_nifti, capsys, stored):
    checkpoint = _segmentation_checkpoint(tmp_path / "seg.ckpt", store_class_names=stored)
    assert main(["export", str(checkpoint), str(tmp_path / "model")]) == 0
    assert json.loads((tmp_path / "model" / "classes.json").read_text()) == ["background", *CLASSES]
    out = tmp_path / "segmented"
    argv = ["segment", str(sample_nifti), "--model", str(tmp_path / "model"), "--out", str(out)]
    assert main([*argv, "--roi", "16", "48", "48", "--overlap", "0.25"]) == 0
    labels = json.loads((out / "sample.json").read_text())["labels"]
    assert labels == {"0": "background", "1": "liver", "2": "spleen", "3": "kidney_left"}


def test_an_msd_checkpoint_exports_its_names_without_the_dataset(tmp_path):
    """The stored names replace ``$len(@model::class_names)``, which would otherwise read dataset.json."""
    config = Config().update(load_recipe(RECIPES / "totalsegmentator.yaml")).get()
    config = copy.deepcopy(config)
    config["model"]["class_names"] = {"_target_": "ctfm.data.msd.msd_class_names", "data_dir": str(tmp_path / "gone")}
    network = ctfm.nn.ct_fm_segresnet(init_filters=4, out_channels=3, dsdepth=4)
    config["vars"]["init_filters"] = 4
    state = {f"network.{k}": v for k, v in network.state_dict().items()}
    names = ["background", "liver", "tumour"]
    path = tmp_path / "msd.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"config": config}, "class_names": names}, path)
    ctfm.export_encoder(path, tmp_path / "model")
    assert json.loads((tmp_path / "model" / "classes.json").read_text()) == names
    without_names = torch.load(path, weights_only=True)
    del without_names["class_names"]
    torch.save(without_names, path)
    with pytest.raises(CTFMError, match="gone"):
        ctfm.export_encoder(path, tmp_path / "model2")


def test_weights_given_as_a_lightning_checkpoint_are_refused(segmentation_checkpoint):
    from ctfm.nn import ct_fm_segresnet
    from ctfm.tasks.finetune import load_pretrained_encoder

    with pytest.raises(ModelLoadError, match="ctfm reads weights from safetensors only"):
        load_pretrained_encoder(ct_fm_segresnet(init_filters=4, out_channels=2), str(segmentation_checkpoint))


class _Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


def test_a_pickled_prototypes_file_or_query_vector_runs_nothing(tmp_path):
    from ctfm.analysis.prototypes import Prototypes
    from ctfm.analysis.query_vectors import load_query_vector

    torch.save({"vectors": _Exploit(tmp_path / "PWNED")}, tmp_path / "p.pt")
    with pytest.raises(CTFMError, match="p.pt: not a prototypes file"):
        Prototypes.load(tmp_path / "p.pt")
    np.save(tmp_path / "q.npy", np.array([_Exploit(tmp_path / "PWNED")], dtype=object), allow_pickle=True)
    with pytest.raises(CTFMError, match="q.npy: cannot be read as a .npy query vector"):
        load_query_vector(tmp_path / "q.npy")
    assert not (tmp_path / "PWNED").exists()


def test_a_broken_query_record_or_class_list_is_one_error_naming_the_file(tmp_path):
    from ctfm.analysis.query_vectors import load_query_vector
    from ctfm.segmentation import load_segmenter

    np.save(tmp_path / "q.npy", np.ones(4, np.float32))
    (tmp_path / "q.npy.json").write_text("{not json")
    with pytest.raises(CTFMError, match="q.npy.json: cannot be read as a query record"):
        load_query_vector(tmp_path / "q.npy")
    (tmp_path / "q.npy.json").write_text('["_target_", "os.system"]')
    with pytest.raises(CTFMError, match="q.npy.json: a query record is a JSON object, got list"):
        load_query_vector(tmp_path / "q.npy")
    folder = ctfm.save_pretrained(ctfm.nn.ct_fm_segresnet(init_filters=4, out_channels=2), tmp_path / "model")
    (folder / "classes.json").write_text('{"_target_": "os.system"}')
    with pytest.raises(CTFMError, match="classes.json: class names must be a JSON list of strings"):
        load_segmenter(folder)


def test_a_config_nested_beyond_reason_is_refused():
    expression = "$" + "(" * 5000 + "1" + ")" * 5000
    nested: dict = {"_target_": "ctfm.nn.ct_fm_encoder"}
    for _ in range(5000):
        nested = {"x": nested}
    for value in (expression, nested):
        with pytest.raises(ModelLoadError, match="^c.ckpt: model::network "):
            rebuild({"model": {"network": value}}, "model::network", source="c.ckpt")
