"""Adapter data: labelled slices (2D) or patches (3D) windowed as in pretraining, labels on the image's grid."""

import pandas as pd
import pytest
import torch

from ctfm.data.diffusion_adapters import DiffusionAdapterData
from ctfm.data.sample import LABEL, make_sample_dataset
from ctfm.errors import CTFMError
from ctfm.transforms.dictionary import CTPreprocessingd
from ctfm.transforms.preprocess import HU_RANGE, CTPreprocessing
from ctfm.transforms.width_level import apply_window

SIZES = {2: (32, 32), 3: (8, 32, 32)}
SPACING = (3.0, 2.0, 2.0)


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    csv = make_sample_dataset(tmp_path_factory.mktemp("data"), n_scans=3, shape=(24, 64, 64), seed=0)
    table = pd.read_csv(csv)
    table["split"] = ["train", "val", "test"]
    table.to_csv(csv, index=False)
    return csv


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_training_crops_are_windowed_and_labels_follow_them(datalist, spatial_dims):
    data = DiffusionAdapterData(
        datalist, "segment", spatial_dims, SIZES[spatial_dims], (1500, -500), num_classes=13, spacing=SPACING,
        batch_size=8, samples_per_scan=8, steps_per_epoch=1,
    )  # fmt: skip
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (8, 1, *SIZES[spatial_dims]) == batch["label"].shape
    torch.testing.assert_close(batch["window"][0], torch.tensor([1500.0, -500.0]))
    image, label = batch["image"], batch["label"]
    assert image.min() >= -1 and image.max() <= 1
    # Lung (-850 HU) sits at -0.47 of the lung window, bone (+700 HU) above its top: the labels are on the crop.
    assert -0.6 < float(image[label == LABEL["lung"]].mean()) < -0.35
    assert float(image[label == LABEL["bone"]].mean()) > 0.5


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_evaluation_items_are_whole_preprocessed_scans_windowed(datalist, spatial_dims):
    data = DiffusionAdapterData(datalist, "segment", spatial_dims, SIZES[spatial_dims], num_classes=13, spacing=SPACING)
    item = data.dataset("val")[0]
    settings = CTPreprocessing(spacing=SPACING, min_size=data.crop)
    reference = CTPreprocessingd(settings, label_keys=["label"])(data.items("val")[0])
    low, high = HU_RANGE
    torch.testing.assert_close(
        item["image"].as_tensor(), apply_window(reference["image"] * (high - low) + low, 1500, -500)
    )
    assert torch.equal(item["label"].as_tensor(), reference["label"].as_tensor())
    assert item["case_id"] == "sample_001"


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_classification_centres_for_evaluation(datalist, tmp_path, spatial_dims):
    table = pd.read_csv(datalist)
    table["image"] = [str(datalist.parent / p) for p in table["image"]]
    table["label"] = ["normal", "nodule", "normal"]
    table.to_csv(tmp_path / "classes.csv", index=False)
    data = DiffusionAdapterData(
        tmp_path / "classes.csv", "classify", spatial_dims, SIZES[spatial_dims], spacing=SPACING
    )
    assert data.num_outputs == 1
    item = data.dataset("val")[0]
    size = SIZES[spatial_dims]
    assert item["label"] == 0  # "nodule" sorts first
    assert tuple(item["image"].shape[-len(size) :]) == size and item["image"].ndim == 4
    train = next(iter(data.train_dataloader()))
    assert train["image"].shape[1:] == (1, *size)


def test_bad_input_is_named_before_training(datalist, tmp_path, caplog):
    table = pd.read_csv(datalist)
    table["image"] = [str(datalist.parent / p) for p in table["image"]]
    table["label"] = [str(datalist.parent / p) for p in table["label"]]
    missing = table.copy()
    missing.loc[1, "label"] = str(tmp_path / "gone.nii.gz")
    missing.to_csv(tmp_path / "missing.csv", index=False)
    with caplog.at_level("WARNING", logger="ctfm.data.base"):
        data = DiffusionAdapterData(tmp_path / "missing.csv", "segment", 2, (32, 32), num_classes=13)
    assert f"missing.csv: line 3: label {tmp_path / 'gone.nii.gz'} does not exist; skipped" in caplog.text
    assert len(data.table) == len(table) - 1
    table.to_csv(tmp_path / "ok.csv", index=False)
    few = DiffusionAdapterData(tmp_path / "ok.csv", "segment", 2, (32, 32), num_classes=3, spacing=SPACING)
    with pytest.raises(CTFMError, match=r"none of the \d+ items can be loaded .* outside the 2 selected classes"):
        few.dataset("train")[0]  # every scan fails: no run goes on without data
    with pytest.raises(CTFMError, match="has 3 values but spatial_dims is 2"):
        DiffusionAdapterData(tmp_path / "ok.csv", "segment", 2, (8, 32, 32), num_classes=13)
    with pytest.raises(CTFMError, match="window width must be > 0"):
        DiffusionAdapterData(tmp_path / "ok.csv", "segment", 2, (32, 32), (0, 40), num_classes=13)
