"""``<stage>_cases.csv`` of the segmentation task: each case's Dice and average surface distance recomputed with
numpy and scipy from the label maps it was given."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import MetaTensor
from scipy.ndimage import binary_erosion, distance_transform_edt

from ctfm.tasks.segmentation import SegmentationModule

SHAPE = (12, 20, 24)
SPACING = (2.0, 1.0, 1.5)
NAMES = ("background", "liver", "spleen")


class LabelsAsLogits(torch.nn.Module):
    """A stand-in network whose prediction is the label map carried in its input (so the test knows it)."""

    out_channels = len(NAMES)

    def forward(self, image):
        return torch.nn.functional.one_hot(image[:, 0].round().long(), len(NAMES)).movedim(-1, 1).float() * 10


def box(shape, low, high, value, out=None):
    out = np.zeros(shape, np.int64) if out is None else out
    out[tuple(slice(a, b) for a, b in zip(low, high))] = value
    return out


def numpy_dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def numpy_asd(a, b, spacing):
    """Symmetric average surface distance (mm): surface voxels (the mask minus its erosion) of each mask to the
    other's surface, all distances pooled."""
    edges = [m & ~binary_erosion(m) for m in (a, b)]
    to_b = distance_transform_edt(~edges[1], sampling=spacing)[edges[0]]
    to_a = distance_transform_edt(~edges[0], sampling=spacing)[edges[1]]
    return np.concatenate([to_b, to_a]).mean()


def test_cases_csv_holds_the_dice_and_asd_of_each_case(tmp_path):
    from ctfm.nn import ct_fm_segresnet

    network = ct_fm_segresnet(out_channels=len(NAMES), init_filters=4)
    module = SegmentationModule(network, NAMES, roi_size=SHAPE, output_dir=tmp_path, surface_distance=True)
    module.network = LabelsAsLogits()  # the task's metrics, on a prediction the test knows
    module._trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True)
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    cases = {
        "a": (box(SHAPE, (2, 3, 3), (8, 12, 12), 1, box(SHAPE, (3, 13, 14), (9, 18, 21), 2)),
              box(SHAPE, (3, 4, 2), (9, 12, 11), 1, box(SHAPE, (2, 12, 15), (8, 17, 22), 2))),
        "b": (box(SHAPE, (4, 5, 5), (9, 10, 12), 1), box(SHAPE, (3, 5, 6), (10, 13, 12), 1)),  # no spleen
    }  # fmt: skip
    for name, (predicted, truth) in cases.items():
        image = MetaTensor(torch.from_numpy(predicted).float()[None, None], affine=affine)
        module._evaluate({"image": image, "label": torch.from_numpy(truth)[None, None], "image_id": [name]}, "val")
    module._write_cases("val")
    table = pd.read_csv(tmp_path / "val_cases.csv").set_index("image_id")
    assert list(table.index) == ["a", "b", "mean"]
    for name, (predicted, truth) in cases.items():
        for value, organ in enumerate(NAMES[1:], start=1):
            mine, theirs = predicted == value, truth == value
            if not theirs.any():
                assert np.isnan(table.loc[name, f"{organ}_dice"])  # absent from the truth: not scored
                continue
            assert table.loc[name, f"{organ}_dice"] == pytest.approx(numpy_dice(mine, theirs), abs=1e-6)
            assert table.loc[name, f"{organ}_asd_mm"] == pytest.approx(numpy_asd(mine, theirs, SPACING), abs=1e-4)
    assert table.loc["mean", "liver_dice"] == pytest.approx(table.loc[["a", "b"], "liver_dice"].mean())
    assert table.loc["mean", "spleen_dice"] == pytest.approx(table.loc["a", "spleen_dice"])  # NaN-aware mean
