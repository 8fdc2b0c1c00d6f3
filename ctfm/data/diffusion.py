"""Diffusion pretraining data: 2D slices or 3D patches of the canonical preprocessing cache, windowed to [-1, 1].

One code path for both: an item crops a random region from a cached scan (a single axial slice in 2D, a patch in
3D) a random 1 to ``max_zoom`` times ``image_size``, resizes it to ``image_size`` (LCTfound's random scale-crop),
flips it left-right, windows it by a window drawn from ``windows`` (its condition) and scales it to [-1, 1], then
changes contrast and brightness slightly. Only the cropped region is read from the memory-mapped cache.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.transforms import Randomizable
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from ctfm.data.base import DatalistDataModule, SkipBadItems, require_datalist
from ctfm.data.cache import CachedScan, PreprocessCache, default_cache_dir
from ctfm.data.datalist import read_datalist
from ctfm.errors import CTFMError
from ctfm.transforms.preprocess import PRETRAINING_SPACING, CTPreprocessing
from ctfm.transforms.quantise import dequantise_hu
from ctfm.transforms.width_level import LCTFOUND_WINDOWS, apply_window
from ctfm.transforms.window import check_window

logger = logging.getLogger(__name__)


class DiffusionDataset(Dataset, Randomizable):
    """Item -> ``{"image": (1, *image_size) in [-1, 1], "window": (2,) HU, "source": path}``, drawn at random;
    with ``texts`` (a caption per source) also ``"text"``, ``""`` for a source without one."""

    def __init__(
        self,
        scans: Sequence[CachedScan],
        spatial_dims: int,
        image_size: Sequence[int],
        windows: Sequence[Sequence[float]] = LCTFOUND_WINDOWS,
        length: int = 1000,
        max_zoom: float = 1.25,
        flip_prob: float = 0.5,
        intensity: float = 0.05,
        texts: Mapping[str, str] | None = None,
    ):
        check_image_size(spatial_dims, image_size)
        if not scans:
            raise CTFMError("DiffusionDataset needs at least one cached scan")
        if max_zoom < 1:
            raise ValueError(f"max_zoom must be at least 1, got {max_zoom}")
        self.scans = list(scans)
        self.spatial_dims = spatial_dims
        self.image_size = tuple(int(s) for s in image_size)
        self.windows = [check_window(*w) for w in windows]
        self.length = length
        self.max_zoom = max_zoom
        self.flip_prob = flip_prob
        self.intensity = intensity
        self.texts = texts

    def __len__(self) -> int:
        return self.length

    def crop(self, volume: np.ndarray) -> np.ndarray:
        """A random region of ``volume`` (``(1, z, y, x)``), one slice thick in 2D, read from the memory map."""
        shape = volume.shape[1:]
        zoom = self.R.uniform(1.0, self.max_zoom)
        size = [1] * (3 - self.spatial_dims) + [max(1, round(s * zoom)) for s in self.image_size]
        size = [min(s, extent) for s, extent in zip(size, shape)]
        start = [int(self.R.randint(extent - s + 1)) for s, extent in zip(size, shape)]
        box = tuple(slice(b, b + s) for b, s in zip(start, size))
        region = volume[(0,) + box]
        return region[0] if self.spatial_dims == 2 else region

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        scan = self.scans[int(self.R.randint(len(self.scans)))]
        hu = torch.from_numpy(dequantise_hu(np.asarray(self.crop(scan.read()))))[None, None]
        mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
        hu = F.interpolate(hu, size=self.image_size, mode=mode, align_corners=False)[0]
        if self.R.rand() < self.flip_prob:
            hu = hu.flip(-1)
        width, level = self.windows[int(self.R.randint(len(self.windows)))]
        image = apply_window(hu, width, level)
        scale = 1 + self.R.uniform(-self.intensity, self.intensity)
        shift = self.R.uniform(-self.intensity, self.intensity)
        image = (image * scale + shift).clamp(-1, 1)
        item: dict[str, torch.Tensor | str] = {
            "image": image, "window": torch.tensor([width, level]), "source": scan.source
        }  # fmt: skip
        if self.texts is not None:
            item["text"] = self.texts.get(scan.source, "")
        return item


def check_image_size(spatial_dims: int, image_size: Sequence[int]) -> None:
    """Refuse a dimension other than 2 or 3, or an ``image_size`` of another length, when a recipe is built."""
    if spatial_dims not in (2, 3):
        raise CTFMError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if len(image_size) != spatial_dims:
        raise CTFMError(
            f"image_size {list(image_size)} has {len(image_size)} values but spatial_dims is {spatial_dims}; "
            "replace a list from the command line with =vars::image_size=[...]"
        )


class DiffusionDataModule(DatalistDataModule):
    """Datalist -> batches of windowed 2D slices (``spatial_dims=2``) or 3D patches (``spatial_dims=3``).

    Scans go through the canonical preprocessing cache once (:class:`~ctfm.data.cache.PreprocessCache`, at
    ``spacing``; bad scans are skipped and reported, :mod:`ctfm.data.base`). An epoch is ``steps_per_epoch``
    batches of random items.
    ``text_column`` names a datalist column of captions for a denoiser with a text encoder (empty cells: no caption).

    Args:
        datalist: a CSV with an ``image`` column; None is refused naming ``vars::datalist``.
        spatial_dims: 2 (axial slices) or 3 (patches).
        image_size: the item size, ``(y, x)`` in 2D or ``(z, y, x)`` in 3D, in voxels at ``spacing``.
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        windows: the ``(width, level)`` windows in HU an item is windowed by (one drawn per item; its condition).
        cache_dir: the preprocessing cache; default ``ctfm_cache/`` beside the datalist.
        spacing: the preprocessing's voxel spacing (z, y, x) in mm.
        steps_per_epoch: batches per epoch.
        max_zoom: crops are 1 to ``max_zoom`` times ``image_size`` before resizing to it.
        seed: seeds the draws.
        text_column: a datalist column of captions, or None.
    """

    def __init__(
        self,
        datalist: str | Path | None,
        spatial_dims: int,
        image_size: Sequence[int],
        batch_size: int = 4,
        windows: Sequence[Sequence[float]] = LCTFOUND_WINDOWS,
        cache_dir: str | Path | None = None,
        spacing: Sequence[float] = PRETRAINING_SPACING,
        steps_per_epoch: int = 500,
        num_workers: int = 4,
        max_zoom: float = 1.25,
        seed: int = 0,
        text_column: str | None = None,
    ):
        super().__init__(num_workers=num_workers, seed=seed)
        require_datalist(datalist)
        assert datalist is not None  # for the type checker: require_datalist refused None
        self.datalist = datalist
        check_image_size(spatial_dims, image_size)
        self.windows = [check_window(*w) for w in windows]
        self.spatial_dims = spatial_dims
        self.image_size = tuple(int(s) for s in image_size)
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.max_zoom = max_zoom
        self.text_column = text_column
        min_size = (1, *self.image_size) if spatial_dims == 2 else self.image_size
        self.cache = PreprocessCache(
            Path(cache_dir) if cache_dir is not None else default_cache_dir(datalist),
            CTPreprocessing(spacing=tuple(float(s) for s in spacing), min_size=min_size),
        )
        self.train_dataset: SkipBadItems | None = None
        self._table: pd.DataFrame | None = None

    def table(self) -> pd.DataFrame:
        """The datalist without rows whose scan is missing (each named once, with its CSV line)."""
        if self._table is None:
            self._table = self.check_rows(read_datalist(self.datalist, keep_blank=True), self.datalist)
        return self._table

    def prepare_data(self) -> None:
        self.cache.prepare(self.table()["image"].tolist())

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        table = self.table()
        sources = table["image"].tolist()
        texts = None
        if self.text_column is not None:
            if self.text_column not in table.columns:
                raise CTFMError(f"{self.datalist}: no column {self.text_column!r} of captions (vars::text_column)")
            captions = table[self.text_column].fillna("").astype(str)
            texts = dict(zip(sources, captions))
        report = self.cache.prepare(sources)
        if not report.scans:
            raise CTFMError(f"no usable scan among the {len(sources)} of the datalist:\n{report.summary()}")
        rank_zero_info(f"diffusion data in {self.cache.root}: {len(report.scans)} usable scans; {report.summary()}")
        dataset = DiffusionDataset(
            report.scans,
            self.spatial_dims,
            self.image_size,
            self.windows,
            length=self.steps_per_epoch * self.batch_size,
            max_zoom=self.max_zoom,
            texts=texts,
        )
        dataset.set_random_state(seed=self.rank_seed())
        self.train_dataset = self.skipping("train", dataset, [scan.source for scan in report.scans])

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        return self.loader(self.train_dataset, self.batch_size, drop_last=True)
