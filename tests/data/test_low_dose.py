"""Simulated full/low-dose pairs: slices in 2D, patches in 3D, random to train on, fixed when held out."""

import pandas as pd
import pytest
import torch

from ctfm.data.low_dose import LowDoseDataModule
from ctfm.data.sample import make_sample_dataset
from ctfm.errors import CTFMError

SIZES = {2: (32, 32), 3: (8, 32, 32)}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_sample_dataset(tmp_path_factory.mktemp("data"), n_scans=3, shape=(24, 64, 64), seed=0)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_pairs_are_on_one_grid_and_held_out_ones_are_fixed(datalist, spatial_dims):
    data = LowDoseDataModule(
        datalist, spatial_dims, SIZES[spatial_dims], batch_size=2, sigma=30.0, val_cases=3, num_workers=0
    )
    data.setup("fit")
    train_scans = {s.source for s in data.datasets["train"].scans}
    held_out = {s.source for split in ("val", "test") for s in data.datasets[split].scans}
    assert len(train_scans) == 1 and len(held_out) == 2 and not train_scans & held_out
    item = data.datasets["val"][1]
    assert item["image"].shape == item["low_dose"].shape == (1, *SIZES[spatial_dims])
    assert item["image"].abs().max() <= 1 and item["low_dose"].abs().max() <= 1
    torch.testing.assert_close(item["window"], torch.tensor([3072.0, 512.0]))
    difference = (item["low_dose"] - item["image"]) * 1536.0  # back to HU at the 3072 HU window
    assert 5.0 < float(difference.std()) < 200.0
    again = data.datasets["val"][1]
    torch.testing.assert_close(again["low_dose"], item["low_dose"])
    assert again["case"] == item["case"] and item["case"].endswith("_0001")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 1, *SIZES[spatial_dims])


def test_too_few_scans_for_a_held_out_split_is_a_clear_error(tmp_path, datalist):
    table = pd.read_csv(datalist)
    table["image"] = [str((datalist.parent / p).resolve()) for p in table["image"]]
    table["split"] = ["train", "train", "val"]
    table.to_csv(tmp_path / "no_test.csv", index=False)
    data = LowDoseDataModule(tmp_path / "no_test.csv", 2, SIZES[2], cache_dir=tmp_path / "cache", num_workers=0)
    with pytest.raises(CTFMError, match="no test scan"):
        data.setup("fit")
    with pytest.raises(CTFMError, match="image_size .* has 2 values but spatial_dims is 3"):
        LowDoseDataModule(datalist, 3, SIZES[2])
    with pytest.raises(CTFMError, match="window width must be > 0"):
        LowDoseDataModule(datalist, 2, SIZES[2], window=(0.0, 40.0))
    with pytest.raises(CTFMError, match="i0 must be > 0"):
        LowDoseDataModule(datalist, 2, SIZES[2], i0=-5)
