"""CT windows: each window clipped to [0, 1], stacked along a spatial axis (or channels), array and dict alike."""

import pytest
import torch
from monai.data import MetaTensor

from ctfm.transforms.window import HEAD_CT_WINDOWS, CTWindows, CTWindowsd


def test_windows_stack_along_the_first_spatial_axis():
    hu = MetaTensor(torch.tensor([-1000.0, 0.0, 32.0, 80.0, 3000.0]).reshape(1, 5, 1, 1).repeat(1, 1, 2, 3))
    out = CTWindows()(hu)
    assert tuple(out.shape) == (1, 20, 2, 3)
    blood, subdural, stroke, bone = out[0, :, 0, 0].reshape(4, 5)
    assert torch.allclose(blood, torch.tensor([0.0, 0.0, 0.4, 1.0, 1.0]))
    assert torch.allclose(subdural, torch.tensor([0.0, 125 / 300, 157 / 300, 205 / 300, 1.0]))
    assert stroke.tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert torch.allclose(bone, torch.tensor([0.0, 0.3, 932 / 3000, 980 / 3000, 1.0]))


def test_dictionary_form_and_channel_stacking():
    hu = torch.full((1, 4, 4, 4), 40.0)
    out = CTWindowsd("image", windows=[(0, 80), (-40, 120)], axis=None)({"image": hu, "label": hu})
    assert tuple(out["image"].shape) == (2, 4, 4, 4) and out["label"] is hu
    assert out["image"][0].unique().tolist() == [0.5] and out["image"][1].unique().tolist() == [0.5]
    assert list(HEAD_CT_WINDOWS) == ["blood", "subdural", "stroke", "bone"]


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="low < high"):
        CTWindows([(80, 0)])
    with pytest.raises(ValueError, match="not a spatial axis"):
        CTWindows(axis=3)(torch.zeros(1, 2, 2, 2))
