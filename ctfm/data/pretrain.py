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
from ctfm.transforms.views import PATCHES_PER_SCAN, ContrastivePatches, ContrastiveViews

#: Where contrastive views are made: see CTPretrainDataModule.
VIEWS_ON = ("auto", "device", "workers")


class CachedScanDataset(Dataset, Randomizable):
    """Item -> ``{key: views(volume), "image": source path}`` from one cached scan.

    ``key`` is ``"views"`` for :class:`ContrastiveViews` ``(M, 2, 1, pz, py, px)``, ``"patches"`` for the raw
    :class:`ContrastivePatches` ``(M, 1, pz, py, px)`` that the training module turns into views on its device.

    ``length=None`` gives one item per scan, in order (a DistributedSampler then splits the scans across ranks).
    A ``length`` draws a random scan per item, with replacement, so an epoch can be any number of steps.
    A cached file that fails to read raises an InvalidScanError naming its source; the data module's
    :class:`~ctfm.data.base.SkipBadItems` logs it, counts it and serves another item instead.
    """

    def __init__(
        self, scans: Sequence[CachedScan], views: ContrastiveViews, length: int | None = None, key: str = "views"
    ):
        if not scans:
            raise ValueError("CachedScanDataset needs at least one cached scan")
        self.scans = list(scans)
        self.views = views
        self.key = key
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
        return {self.key: self.views(scan.read()), "image": scan.source}


class CTPretrainDataModule(DatalistDataModule):
    """Datalist -> batches ``{"views": (S, M, 2, 1, pz, py, px), "image": list of S paths}`` for pretraining.

    Scans are preprocessed once (``spacing``, HU range, crop to body, pad to a patch) into ``cache_dir`` by
    ``prepare_data`` (once per node under DDP) and ``setup`` (which only looks entries up when they exist); the
    default is :func:`~ctfm.data.cache.default_cache_dir`, ``ctfm_cache/`` beside a datalist CSV. Bad scans are
    skipped, counted and reported: a missing file by its CSV line at set-up, an unusable scan by the cache's report,
    a cached file that fails to read during training by :class:`~ctfm.data.base.DatalistDataModule`.
    ``steps_per_epoch`` makes each epoch that many batches per device, drawing scans with replacement (the paper:
    500); ``None`` makes an epoch one pass over the scans, split across devices. ``augmentation`` replaces
    :func:`~ctfm.transforms.views.view_augmentation` (one view from one patch).

    ``views_on``: ``"workers"`` makes the views in the DataLoader workers; ``"device"`` makes the workers return
    the raw patches (``{"patches": (S, M, 1, pz, py, px) uint16}``) for the training module to augment on its
    device (:class:`~ctfm.tasks.IntraSampleSimCLR` does, with ``device_views``); ``"auto"`` (default) picks
    ``"device"`` when the trainer runs on a GPU and its module makes device views, else ``"workers"`` (on a CPU
    the worker pipeline is the faster one: it augments the small crop, not the full patch).

    Args:
        datalist: a CSV with an ``image`` column, or a list of scan paths.
        cache_dir: the preprocessing cache; default ``ctfm_cache/`` beside the datalist.
        patch_size: the patch (z, y, x) two views are cut from.
        patches_per_scan: patches per scan in a batch (the intra-sample negatives).
        scans_per_device: scans per batch on each device.
        num_workers: DataLoader worker processes.
        steps_per_epoch: batches per epoch per device, or None for one pass over the scans.
        spacing: the preprocessing's voxel spacing (z, y, x) in mm.
        seed: seeds the draws.
        augmentation: replaces :func:`~ctfm.transforms.views.view_augmentation`.
        prepare_workers: processes that fill the cache; None: ``num_workers`` (at least 1).
        views_on: ``"workers"``, ``"device"`` or ``"auto"``, as above.
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
        views_on: str = "auto",
    ):
        super().__init__(num_workers=num_workers, seed=seed)
        require_datalist(datalist)
        if views_on not in VIEWS_ON:
            raise CTFMError(f"views_on must be one of {', '.join(VIEWS_ON)}, got {views_on!r} (vars::views_on)")
        if views_on == "device" and augmentation is not None:
            raise CTFMError("a custom augmentation runs in the DataLoader workers: set views_on to 'workers'")
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
        self.views_on = views_on
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
        if self.views_on == "auto":
            self.views_on = self._auto_views_on()
        if self.views_on == "device":
            if self.trainer is not None and getattr(self.trainer.lightning_module, "device_views", None) is None:
                raise CTFMError(
                    f"views_on is 'device' but {type(self.trainer.lightning_module).__name__} makes no views on the "
                    "device: set vars::views_on=workers"
                )
            dataset = CachedScanDataset(
                self.report.scans, ContrastivePatches(self.patch_size, self.patches_per_scan), key="patches"
            )
        else:
            views = ContrastiveViews(self.patch_size, self.patches_per_scan, self.augmentation)
            dataset = CachedScanDataset(self.report.scans, views)
        dataset.set_random_state(seed=self.rank_seed())
        self.train_dataset = self.skipping("train", dataset, [scan.source for scan in self.report.scans])

    def _auto_views_on(self) -> str:
        """Device views on a GPU whose module can make them (and no custom augmentation), else worker views."""
        if self.trainer is None or self.augmentation is not None:
            return "workers"
        on_gpu = self.trainer.strategy.root_device.type == "cuda"
        return "device" if on_gpu and getattr(self.trainer.lightning_module, "device_views", None) else "workers"

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
