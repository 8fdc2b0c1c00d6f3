"""Datalist, dataset and Lightning data module for intra-sample SimCLR pretraining.

The data module preprocesses every scan of a datalist once into a :class:`~ctfm.data.cache.PreprocessCache`, then
each training item reads M patches of one cached scan and returns their two views. Nothing is read at import or
construction; the work starts in ``prepare_data`` / ``setup``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Randomizable
from monai.utils import MAX_SEED
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from ctfm.data.base import DatalistDataModule, SkipBadItems, require_datalist
from ctfm.data.cache import CachedScan, PrepareReport, PreprocessCache, default_cache_dir
from ctfm.data.datalist import read_datalist
from ctfm.errors import CTFMError
from ctfm.transforms.preprocess import PATCH_SIZE, PRETRAINING_SPACING, CTPreprocessing
from ctfm.transforms.views import PATCHES_PER_SCAN, ContrastiveViews


class CachedScanDataset(Dataset, Randomizable):
    """Item -> ``{"views": (M, 2, 1, pz, py, px), "image": source path}`` from one cached scan.

    ``length=None`` gives one item per scan, in order (a DistributedSampler then splits the scans across ranks).
    A ``length`` draws a random scan per item, with replacement, so an epoch can be any number of steps.
    A cached file that fails to read raises an InvalidScanError naming its source; the data module's
    :class:`~ctfm.data.base.SkipBadItems` logs it, counts it and serves another item instead.
    """

    def __init__(self, scans: Sequence[CachedScan], views: ContrastiveViews, length: int | None = None):
        if not scans:
            raise ValueError("CachedScanDataset needs at least one cached scan")
        self.scans = list(scans)
        self.views = views
        self.length = length

    def __len__(self) -> int:
        return len(self.scans) if self.length is None else self.length

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed=seed, state=state)
        self.views.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def randomize(self, data: object = None) -> int:  # type: ignore[override]  # returns the draw
        """A random scan index."""
        return int(self.R.randint(len(self.scans)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        scan = self.scans[index % len(self.scans) if self.length is None else self.randomize()]
        return {"views": self.views(scan.read()), "image": scan.source}


class CTPretrainDataModule(DatalistDataModule):
    """Datalist -> batches ``{"views": (S, M, 2, 1, pz, py, px), "image": list of S paths}`` for pretraining.

    Scans are preprocessed once (``spacing``, HU window, crop to body, pad to a patch) into ``cache_dir`` by
    ``prepare_data`` (once per node under DDP) and ``setup`` (which only looks entries up when they exist); the
    default is :func:`~ctfm.data.cache.default_cache_dir`, ``ctfm_cache/`` beside a datalist CSV. Bad scans are
    skipped, counted and reported: a missing file by its CSV line at set-up, an unusable scan by the cache's report,
    a cached file that fails to read during training by :class:`~ctfm.data.base.DatalistDataModule`.
    ``steps_per_epoch`` makes each epoch that many batches per device, drawing scans with replacement (the paper:
    500); ``None`` makes an epoch one pass over the scans, split across devices. ``augmentation`` replaces
    :func:`~ctfm.transforms.views.view_augmentation` (one view from one patch).
    """

    def __init__(
        self,
        datalist: str | Path | Sequence[str | Path],
        cache_dir: str | Path | None = None,
        patch_size: Sequence[int] = PATCH_SIZE,
        patches_per_scan: int = PATCHES_PER_SCAN,
        scans_per_device: int = 4,
        num_workers: int = 4,
        steps_per_epoch: int | None = None,
        spacing: Sequence[float] = PRETRAINING_SPACING,
        seed: int = 0,
        augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
        prepare_workers: int | None = None,
    ):
        super().__init__(num_workers=num_workers, seed=seed)
        require_datalist(datalist)
        for name, value in (("patch_size", patch_size), ("spacing", spacing)):
            if len(value) != 3:
                raise ValueError(
                    f"{name} must have 3 values (z, y, x), got {list(value)}; to replace a list from the command "
                    f"line write =vars::{name}=[...] (a plain vars::{name}=[...] appends to the default)"
                )
        if scans_per_device < 1:
            raise ValueError(f"scans_per_device must be at least 1, got {scans_per_device}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be at least 1 or None, got {steps_per_epoch}")
        self.datalist = datalist
        if cache_dir is None:
            cache_dir = default_cache_dir(datalist if isinstance(datalist, (str, Path)) else None)
        self.cache = PreprocessCache(
            Path(cache_dir),
            CTPreprocessing(spacing=tuple(float(s) for s in spacing), min_size=tuple(int(p) for p in patch_size)),
        )
        self.patch_size = tuple(int(p) for p in patch_size)
        self.patches_per_scan = patches_per_scan
        self.scans_per_device = scans_per_device
        self.steps_per_epoch = steps_per_epoch
        self.augmentation = augmentation
        self.prepare_workers = max(1, num_workers) if prepare_workers is None else prepare_workers
        self.report: PrepareReport | None = None
        self._announced = False
        self.train_dataset: SkipBadItems | None = None
        self._sources: list[str] | None = None

    def sources(self) -> list[str]:
        """Scan paths of the datalist (a CSV path, or the paths themselves); rows whose file is missing are left
        out with a warning naming their CSV line (once)."""
        if self._sources is None:
            if isinstance(self.datalist, (str, Path)):
                self._sources = self.check_rows(read_datalist(self.datalist, keep_blank=True), self.datalist)[
                    "image"
                ].tolist()
            else:
                self._sources = [os.path.normpath(Path(p).expanduser().absolute()) for p in self.datalist]
        return self._sources

    def prepare_data(self) -> None:
        sources = self.sources()
        self._announce(self.cache.prepare(sources, workers=self.prepare_workers), len(sources))

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        sources = self.sources()
        self.report = self.cache.prepare(sources, workers=self.prepare_workers)  # only looks up what prepare_data did
        if not self.report.scans:
            raise CTFMError(f"no usable scan among the {len(sources)} of the datalist:\n{self.report.summary()}")
        if self.report.prepared or not self._announced:
            self._announce(self.report, len(sources))
        views = ContrastiveViews(self.patch_size, self.patches_per_scan, self.augmentation)
        dataset = CachedScanDataset(self.report.scans, views)
        dataset.set_random_state(seed=self.rank_seed())
        self.train_dataset = self.skipping("train", dataset, [scan.source for scan in self.report.scans])

    def _announce(self, report: PrepareReport, total: int) -> None:
        """Log the preparation summary once (on rank 0), with a warning if scans were skipped."""
        rank_zero_info(f"pretraining data in {self.cache.root}: {len(report.scans)} usable scans; {report.summary()}")
        if report.skipped:
            rank_zero_warn(f"{len(report.skipped)} of {total} scans skipped (see the summary above)")
        self._announced = True

    def train_dataloader(self) -> DataLoader:
        if self.train_dataset is None:
            self.setup("fit")
        assert self.train_dataset is not None
        world = self.world_size()
        dataset = self.train_dataset
        if self.steps_per_epoch is not None:
            dataset.dataset.length = self.steps_per_epoch * self.scans_per_device * world
        per_device = len(dataset) // world
        return self.loader(
            dataset,
            self.scans_per_device,
            shuffle=self.steps_per_epoch is None,
            drop_last=per_device >= self.scans_per_device,
        )
