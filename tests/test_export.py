"""``ctfm export`` takes the network's config key and weight prefix from the checkpoint's own config."""

import re

import pytest
import torch

import ctfm
from ctfm.cli import main
from ctfm.errors import ModelLoadError
from ctfm.nn import ct_fm_segresnet


def _checkpoint(path, config, state_dict):
    torch.save({"state_dict": state_dict, "hyper_parameters": {"config": config}}, path)
    return path


def test_a_fine_tuned_segresnet_exports_whole(tmp_path):
    torch.manual_seed(0)
    network = ct_fm_segresnet(init_filters=4, out_channels=3, dsdepth=2)
    config = {
        "vars": {"weights": "ct-fm"},  # a pretrained start that export must not fetch again
        "model": {
            "_target_": "torch.nn.Identity",
            "network": {"_target_": "ctfm.nn.ct_fm_segresnet", "init_filters": 4, "out_channels": 3, "dsdepth": 2},
        },
    }
    state = {f"network.{k}": v for k, v in network.state_dict().items()}
    state["criterion.weight"] = torch.ones(3)  # other module state is left behind
    path = _checkpoint(tmp_path / "seg.ckpt", config, state)
    assert main(["export", str(path), str(tmp_path / "seg")]) == 0
    loaded = ctfm.load(tmp_path / "seg")
    assert type(loaded).__name__ == "SegResNetDS" and loaded.out_channels == 3 and loaded.dsdepth == 2
    for key, value in network.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_a_checkpoint_without_an_exportable_network_names_what_it_looked_for(tmp_path, capsys):
    config = {
        "model": {
            "_target_": "torch.nn.Identity",
            "network": {"_target_": "ctfm.nn.ProjectionHead", "in_features": 2, "out_features": 2},
        }
    }
    path = _checkpoint(tmp_path / "head.ckpt", config, {"network.weight": torch.zeros(2, 2)})
    assert main(["export", str(path), str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error
    assert re.search(
        r"found no SegResEncoder or .*at model::network::student, model::network::encoder, model::network", error
    )


def test_export_refuses_nan_weights_naming_them(tmp_path):
    network = ct_fm_segresnet(init_filters=4)
    state = {f"network.{k}": v.clone() for k, v in network.state_dict().items()}
    state["network.encoder.conv_init.weight"].fill_(float("nan"))
    config = {
        "model": {
            "_target_": "torch.nn.Identity",
            "network": {"_target_": "ctfm.nn.ct_fm_segresnet", "init_filters": 4},
        }
    }
    path = _checkpoint(tmp_path / "nan.ckpt", config, state)
    with pytest.raises(ModelLoadError, match=r"1 of \d+ tensors hold NaN or inf values \(encoder.conv_init.weight\)"):
        ctfm.export_encoder(path, tmp_path / "out")
