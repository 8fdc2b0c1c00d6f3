"""Full-dose / low-dose pairs for low-dose enhancement: slices (2D) or patches (3D) of the preprocessing cache.

The full-dose image is a crop of a cached scan (as :mod:`ctfm.data.diffusion` cuts them, in HU); its low-dose
partner is simulated from it (:class:`~ctfm.transforms.low_dose.SimulateLowDose`: Poisson noise in the projection
domain in 2D, Gaussian in 3D). Both are then windowed by one window to [-1, 1]; the default window is the whole
canonical HU range [-1024, 2048], a plain rescale that clips nothing. Training items are drawn at random; the
held-out items (``split`` column, or a seeded 8:1:1 split of the datalist by scan) are fixed: item ``i`` is always
the same crop of the same scan with the same noise, so every validation epoch scores the same pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from ctfm.data.base import DatalistDataModule, SkipBadItems, require_datalist
from ctfm.data.cache import CachedScan, PreprocessCache, default_cache_dir
from ctfm.data.datalist import assign_splits, read_datalist
from ctfm.data.diffusion import check_image_size
from ctfm.errors import CTFMError
from ctfm.transforms.low_dose import SimulateLowDose
from ctfm.transforms.preprocess import PRETRAINING_SPACING, CTPreprocessing
from ctfm.transforms.quantise import dequantise_hu
from ctfm.transforms.width_level import apply_window
from ctfm.transforms.window import check_window

#: The whole canonical HU range [-1024, 2048] as a window (width, level): windowing only rescales.
FULL_RANGE_WINDOW = (3072.0, 512.0)


class LowDoseDataset(Dataset):
    """Item -> ``{"image": full dose, "low_dose": simulated, both (1, *image_size) in [-1, 1], "window", "case"}``.

    ``fixed=True`` makes item ``i`` a function of ``(seed, i)`` alone (held-out pairs); otherwise items are random
    (training), seeded through ``set_random_state``. Training items are random 1 to ``max_zoom`` times
    ``image_size`` crops, flipped left-right half the time; fixed ones are plain crops.
    """

    def __init__(
        self,
        scans: Sequence[CachedScan],
        spatial_dims: int,
        image_size: Sequence[int],
        simulator: SimulateLowDose,
        window: Sequence[float] = FULL_RANGE_WINDOW,
        length: int = 1000,
        fixed: bool = False,
        max_zoom: float = 1.25,
        seed: int = 0,
    ):
        if spatial_dims not in (2, 3) or simulator.spatial_dims != spatial_dims:
            raise CTFMError(f"spatial_dims must be 2 or 3 and match the simulator's, got {spatial_dims}")
        check_image_size(spatial_dims, image_size)
        if not scans:
            raise CTFMError("LowDoseDataset needs at least one cached scan")
        self.scans = list(scans)
        self.spatial_dims = spatial_dims
        self.image_size = tuple(int(s) for s in image_size)
        self.simulator = simulator
        self.window = check_window(*window)
        self.length = length
        self.fixed = fixed
        self.max_zoom = 1.0 if fixed else max_zoom
        self.R = np.random.RandomState(seed)
        self.seed = seed

    def set_random_state(self, seed: int) -> None:
        self.R = np.random.RandomState(seed)

    def __len__(self) -> int:
        return self.length

    def _crop(self, volume: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
        shape = volume.shape[1:]
        zoom = rng.uniform(1.0, self.max_zoom) if self.max_zoom > 1 else 1.0
        size = [1] * (3 - self.spatial_dims) + [max(1, round(s * zoom)) for s in self.image_size]
        size = [min(s, extent) for s, extent in zip(size, shape)]
        start = [int(rng.randint(extent - s + 1)) for s, extent in zip(size, shape)]
        box = tuple(slice(b, b + s) for b, s in zip(start, size))
        region = volume[0][box]
        return region[0] if self.spatial_dims == 2 else region

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.RandomState([self.seed, index]) if self.fixed else self.R
        scan = self.scans[index % len(self.scans)] if self.fixed else self.scans[int(rng.randint(len(self.scans)))]
        hu = torch.from_numpy(dequantise_hu(np.asarray(self._crop(scan.read(), rng))))[None, None]
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        hu = F.interpolate(hu, size=self.image_size, mode=mode, align_corners=False)[0]
        if not self.fixed and rng.rand() < 0.5:
            hu = hu.flip(-1)
        self.simulator.set_random_state(state=rng)
        low = self.simulator(hu)
        return {
            "image": apply_window(hu, *self.window),
            "low_dose": apply_window(low, *self.window),
            "window": torch.tensor(self.window),
            "case": f"{Path(scan.source).name.split('.')[0]}_{index:04d}",
        }


class LowDoseDataModule(DatalistDataModule):
    """Datalist -> simulated full/low-dose pairs: random ones to train on, fixed held-out ones for val and test.

    Args:
        datalist: CSV with an ``image`` column and an optional ``split`` column (train / val / test); without
            one, scans are split 8:1:1 (seeded; at least one val and one test scan, so three scans or more).
        window: (width, level) in HU mapped to [-1, 1] for the network.
        spatial_dims: 2 (axial slices) or 3 (patches).
        image_size: the item size, ``(y, x)`` in 2D or ``(z, y, x)`` in 3D, in voxels at ``spacing``.
        batch_size: items per batch.
        noise: the simulator's noise model (:class:`~ctfm.transforms.low_dose.SimulateLowDose`); its pixel size is the
            in-plane ``spacing``.
        i0: the simulator's incident photon count.
        sigma: the simulator's image-domain noise level.
        views: the simulator's projection views.
        cache_dir: the preprocessing cache; default ``ctfm_cache/`` beside the datalist.
        spacing: the preprocessing's voxel spacing (z, y, x) in mm.
        steps_per_epoch: training batches per epoch.
        val_cases: held-out validation pairs per epoch.
        test_cases: held-out test pairs.
        num_workers: DataLoader worker processes.
        seed: seeds the split, the crops and the simulated noise.
    """

    def __init__(
        self,
        datalist: str | Path | None,
        spatial_dims: int,
        image_size: Sequence[int],
        batch_size: int = 4,
        noise: str | None = None,
        i0: float = 1e4,
        sigma: float = 25.0,
        views: int | None = None,
        window: Sequence[float] = FULL_RANGE_WINDOW,
        cache_dir: str | Path | None = None,
        spacing: Sequence[float] = PRETRAINING_SPACING,
        steps_per_epoch: int = 500,
        val_cases: int = 16,
        test_cases: int = 32,
        num_workers: int = 4,
        seed: int = 0,
    ):
        super().__init__(num_workers=num_workers, seed=seed)
        require_datalist(datalist)
        assert datalist is not None  # for the type checker: require_datalist refused None
        self.datalist = Path(datalist)
        check_image_size(spatial_dims, image_size)
        spacing = tuple(float(s) for s in spacing)
        self.simulation = functools.partial(
            SimulateLowDose, spatial_dims, noise=noise, i0=i0, sigma=sigma, pixel_mm=spacing[-1], views=views
        )
        self.simulation()  # refuses bad settings before anything is cached
        self.window = check_window(*window)
        self.spatial_dims = spatial_dims
        self.image_size = tuple(int(s) for s in image_size)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.cases = {"val": val_cases, "test": test_cases}
        min_size = (1, *self.image_size) if spatial_dims == 2 else self.image_size
        self.cache = PreprocessCache(
            Path(cache_dir) if cache_dir is not None else default_cache_dir(datalist),
            CTPreprocessing(spacing=spacing, min_size=min_size),
        )
        self.datasets: dict[str, SkipBadItems] = {}
        self._table: pd.DataFrame | None = None

    def table(self) -> pd.DataFrame:
        """The datalist and its splits, without rows whose scan is missing (each named once, with its CSV line)."""
        if self._table is None:
            table = self.check_rows(read_datalist(self.datalist, keep_blank=True), self.datalist)
            table["split"] = assign_splits(table, self.datalist, self.seed)
            self._table = table
        return self._table

    def prepare_data(self) -> None:
        self.cache.prepare(self.table()["image"].tolist())

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        table = self.table()
        for split in ("train", "val", "test"):
            if not (table["split"] == split).any():
                raise CTFMError(
                    f"{self.datalist}: no {split} scan; low-dose enhancement needs held-out scans (give a split "
                    "column, or at least three scans for the 8:1:1 split)"
                )
        report = self.cache.prepare(table["image"].tolist())
        cached = {scan.source: scan for scan in report.scans}
        rank_zero_info(f"low-dose data in {self.cache.root}: {len(cached)} usable scans; {report.summary()}")
        for split in ("train", "val", "test"):
            scans = [cached[s] for s in table.loc[table["split"] == split, "image"] if s in cached]
            if not scans:
                raise CTFMError(f"{self.datalist}: none of the {split} scans could be read:\n{report.summary()}")
            fixed = split != "train"
            length = self.cases[split] if fixed else self.steps_per_epoch * self.batch_size
            seed = self.seed + {"train": 0, "val": 1, "test": 2}[split]
            dataset = LowDoseDataset(
                scans, self.spatial_dims, self.image_size, self.simulation(),
                window=self.window, length=length, fixed=fixed, seed=seed,
            )  # fmt: skip
            self.datasets[split] = self.skipping(split, dataset, [scan.source for scan in scans])
        self.datasets["train"].set_random_state(self.rank_seed())

    def _loader(self, split: str) -> DataLoader:
        if not self.datasets:
            self.setup()
        return self.loader(self.datasets[split], self.batch_size, drop_last=split == "train")

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
