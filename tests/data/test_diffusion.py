"""Diffusion data: windowed slices (2D) or patches (3D) of the preprocessing cache, one class for both."""

import numpy as np
import pytest
import torch

from ctfm.data.cache import PreprocessCache
from ctfm.data.diffusion import DiffusionDataModule, DiffusionDataset
from ctfm.data.sample import make_sample_dataset
from ctfm.errors import CTFMError
from ctfm.transforms.preprocess import CTPreprocessing
from ctfm.transforms.quantise import dequantise_hu
from ctfm.transforms.width_level import apply_window

SIZES = {2: (32, 32), 3: (8, 32, 32)}


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    datalist = make_sample_dataset(tmp_path_factory.mktemp("data"), n_scans=2, shape=(24, 64, 64), seed=0)
    cache = PreprocessCache(datalist.parent / "cache", CTPreprocessing(min_size=(8, 32, 32)))
    return cache.prepare([str(p) for p in (datalist.parent / "images").iterdir()], progress=False).scans


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_items_are_windowed_crops_of_the_cached_scan(scans, spatial_dims):
    size = SIZES[spatial_dims]
    plain = DiffusionDataset(scans[:1], spatial_dims, size, [(400, 40)], max_zoom=1.0, flip_prob=0, intensity=0)
    plain.set_random_state(3)
    item = plain[0]
    assert item["image"].shape == (1, *size) and item["source"] == scans[0].source
    torch.testing.assert_close(item["window"], torch.tensor([400.0, 40.0]))
    # Without zoom, flip or intensity changes the item is exactly one windowed region of the cache.
    plain.set_random_state(3)
    volume = scans[0].load()
    region = plain.crop(volume)
    assert region.shape == size
    torch.testing.assert_close(item["image"][0], apply_window(dequantise_hu(np.asarray(region)), 400, 40))
    assert item["image"].min() >= -1 and item["image"].max() <= 1

    augmented = DiffusionDataset(scans, spatial_dims, size, [(1500, -500), (400, 0)])
    augmented.set_random_state(0)
    items = [augmented[i] for i in range(8)]
    assert {tuple(i["window"].tolist()) for i in items} == {(1500.0, -500.0), (400.0, 0.0)}
    assert all(i["image"].shape == (1, *size) for i in items)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 2, "image_size": (8, 32, 32)}, "has 3 values but spatial_dims is 2"),
        ({"spatial_dims": 3, "image_size": (8, 32, 32), "windows": [(0, -500)]}, "window width must be > 0"),
        ({"spatial_dims": 4, "image_size": (8, 32, 32)}, "spatial_dims must be 2 or 3"),
    ],
)
def test_bad_settings_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(CTFMError, match=message):
        DiffusionDataModule(tmp_path / "datalist.csv", **kwargs)
