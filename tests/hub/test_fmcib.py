"""FMCIB in the registry: its exact architecture, and its two checkpoint layouts read with weights_only, strictly."""

import pytest
import torch

import ctfm
from ctfm.errors import ModelLoadError
from ctfm.hub.fmcib import load_fmcib
from ctfm.nn import fmcib


def test_fmcib_architecture_gives_4096_features():
    with torch.device("meta"):
        model = fmcib.fmcib_resnet50()
    assert model.conv1.in_channels == 1 and model.conv1.stride == (2, 2, 2) and model.fc is None
    assert model.layer4[-1].conv3.out_channels == 4096
    assert ctfm.hub.registry.MODELS["fmcib"].embedding_dim == 4096
    assert ctfm.hub.registry.MODELS["fmcib"].repo_id == "surajpaib/FMCIB"


@pytest.fixture
def tiny(monkeypatch):
    """FMCIB's architecture at 1/32 of its width, so a randomly initialised checkpoint takes kilobytes."""
    monkeypatch.setitem(fmcib.FMCIB_CONFIG, "widen_factor", 0.0625)
    return fmcib.fmcib_resnet50().eval()


def test_both_layouts_load_strictly(tiny, tmp_path):
    state = tiny.state_dict()
    x = torch.rand(2, 1, 16, 16, 16)
    released = tmp_path / "model_weights.torch"
    torch.save({"trunk_state_dict": state}, released)
    lighter = tmp_path / "lighter.ckpt"
    head = {"model.heads.0.weight": torch.zeros(3, 4)}
    torch.save({"state_dict": {**{f"model.trunk.{k}": v for k, v in state.items()}, **head}, "epoch": 3}, lighter)
    for model in (ctfm.load(released), load_fmcib(lighter)):
        assert not model.training and torch.allclose(model(x), tiny(x))
    assert tuple(ctfm.load(released)(x).shape) == (2, 128)  # 2048 x 2 x 1/32: 4096 at full width


def test_wrong_checkpoints_fail_by_name(tiny, tmp_path):
    state = tiny.state_dict()
    missing = tmp_path / "missing.torch"
    torch.save({"trunk_state_dict": {k: v for k, v in state.items() if not k.startswith("layer4")}}, missing)
    with pytest.raises(ModelLoadError, match="missing: layer4"):
        ctfm.load(missing)
    other = tmp_path / "other.torch"
    torch.save({"model": state}, other)
    with pytest.raises(ModelLoadError, match="not an FMCIB checkpoint"):
        ctfm.load(other)
    code = tmp_path / "code.torch"
    torch.save({"trunk_state_dict": state, "callback": torch.nn.ReLU()}, code)  # a pickled object, not tensors
    with pytest.raises(ModelLoadError, match="weights_only=True"):
        ctfm.load(code)
