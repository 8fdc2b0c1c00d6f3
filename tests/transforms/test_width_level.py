"""Intensity windows as (width, level): HU <-> [-1, 1], and the cache's uint16 decoded back to HU."""

import numpy as np
import torch
from monai.data import MetaTensor

from ctfm.data.sample import generate_ct
from ctfm.transforms.preprocess import HU_RANGE
from ctfm.transforms.quantise import dequantise_hu, quantise
from ctfm.transforms.width_level import LUNG_WINDOW, Windowd, apply_window, remove_window


def test_window_maps_its_edges_to_minus_one_and_one_and_back():
    hu = torch.tensor([-1250.0, -500.0, 250.0, 1000.0, -2000.0])
    image = apply_window(hu, 1500, -500)
    torch.testing.assert_close(image, torch.tensor([-1.0, 0.0, 1.0, 1.0, -1.0]))
    torch.testing.assert_close(remove_window(image[:3], 1500, -500), hu[:3])


def test_the_cache_codec_gives_back_hu_within_one_step():
    hu = generate_ct(shape=(8, 32, 32), seed=0).hu.astype(np.float32)
    low, high = HU_RANGE
    stored = quantise((hu - low) / (high - low))
    decoded = dequantise_hu(stored)
    inside = (hu >= low) & (hu <= high)
    step = (high - low) / np.iinfo(np.uint16).max
    assert decoded.dtype == np.float32 and np.abs(decoded[inside] - hu[inside]).max() <= step / 2 + 1e-3


def test_windowd_windows_a_preprocessed_image_and_names_its_window():
    low, high = HU_RANGE
    hu = torch.tensor([[-1250.0, -500.0, 250.0]])
    item = Windowd(LUNG_WINDOW)({"image": MetaTensor((hu - low) / (high - low))})
    torch.testing.assert_close(item["image"].as_tensor(), torch.tensor([[-1.0, 0.0, 1.0]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(item["window"], torch.tensor(LUNG_WINDOW))
