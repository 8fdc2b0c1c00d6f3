"""Labelled data for the diffusion adapters: 2D slices or 3D patches windowed exactly as in diffusion pretraining.

A datalist is a CSV with ``image`` and ``label`` columns and an optional ``split`` (train / val / test; without
one a seeded 8:1:1 split is drawn, as :mod:`ctfm.data.classification`); relative paths resolve against the CSV's
folder. For segmentation ``label`` is a label-map file on the image's grid (0 background, 1..K classes, e.g. the
``datalist.csv`` of :func:`ctfm.data.sample.make_sample_dataset`); for classification it is the scan's class.

Every scan goes through the canonical preprocessing at the pretraining ``spacing`` (orientation SPL, resampling,
crop to the body, padding with air) and is then windowed by ``window`` to [-1, 1]
(:class:`~ctfm.transforms.width_level.Windowd`), the same window that becomes the denoiser's condition: the scaling
the denoiser saw in pretraining, without its random zoom. Training items are random ``image_size`` crops, an axial
slice in 2D or a patch in 3D (segmentation crops are centred on each class equally often,
``RandCropByLabelClassesd``), flipped left-right with p 0.5. Validation and test items are whole scans, one per
batch: the adapter slides over them (segmentation), or scores every axial slice of the in-plane centre crop (2D) or
the centre patch (3D) for classification.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from monai.data import CacheDataset
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    RandCropByLabelClassesd,
    RandFlipd,
    RandSpatialCropd,
    SqueezeDimd,
)
from torch.utils.data import DataLoader, RandomSampler

from ctfm.data.base import DatalistDataModule, SkipBadItems, load_problem, require_datalist
from ctfm.data.datalist import LabelEncoding, assign_splits, read_datalist
from ctfm.data.diffusion import check_image_size
from ctfm.data.segmentation import LabelsBelow
from ctfm.errors import CTFMError
from ctfm.transforms.dictionary import CTPreprocessingd, LoadCTd
from ctfm.transforms.preprocess import PRETRAINING_SPACING, CTPreprocessing
from ctfm.transforms.width_level import LUNG_WINDOW, Windowd
from ctfm.transforms.window import check_window


class DiffusionAdapterData(DatalistDataModule):
    """``image,label[,split]`` CSV -> windowed crops to train on, whole windowed scans to evaluate.

    Args:
        datalist: the CSV (see the module docstring).
        task: ``segment`` (``label`` is a label-map path) or ``classify`` (``label`` is a class).
        spatial_dims: 2 (axial slices) or 3 (patches), as the pretrained denoiser.
        image_size: the training crop, ``(y, x)`` in 2D or ``(z, y, x)`` in 3D, in voxels at ``spacing``.
        window: ``(width, level)`` in HU, both the windowing and the denoiser's condition.
        num_classes: segmentation output channels, background included (a label value >= it is refused).
        samples_per_scan: training crops drawn per scan read (segmentation); a batch holds ``batch_size`` crops.
        steps_per_epoch: training batches per epoch, drawn with replacement (a few labelled scans make short
            epochs otherwise, and validation would run every other step).
        cache_rate: the fraction of scans kept in memory after preprocessing (``monai.data.CacheDataset``).
        spacing: the preprocessing's voxel spacing (z, y, x) in mm, as in pretraining.
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the 8:1:1 split drawn when there is no ``split`` column, and the crops.
    """

    def __init__(
        self,
        datalist: str | Path | None,
        task: str,
        spatial_dims: int,
        image_size: Sequence[int],
        window: Sequence[float] = LUNG_WINDOW,
        num_classes: int | None = None,
        spacing: Sequence[float] = PRETRAINING_SPACING,
        batch_size: int = 4,
        samples_per_scan: int = 4,
        num_workers: int = 0,
        steps_per_epoch: int = 100,
        cache_rate: float = 1.0,
        seed: int = 0,
    ):
        super().__init__(num_workers=num_workers, seed=seed)
        require_datalist(datalist, "columns image,label[,split]")
        assert datalist is not None  # for the type checker: require_datalist refused None
        if task not in ("segment", "classify"):
            raise ValueError(f"task must be 'segment' or 'classify', got {task!r}")
        check_image_size(spatial_dims, image_size)
        if task == "segment" and (num_classes is None or num_classes < 2):
            raise CTFMError(f"segmentation needs num_classes >= 2 (background included), got {num_classes}")
        self.csv = Path(datalist)
        self.task = task
        self.spatial_dims = spatial_dims
        self.image_size = tuple(int(s) for s in image_size)
        self.window = check_window(*window)
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.samples_per_scan = samples_per_scan if task == "segment" else 1
        self.steps_per_epoch = steps_per_epoch
        self.cache_rate = cache_rate
        table = read_datalist(self.csv, keep_blank=True)
        if task == "segment" and "label" in table.columns:  # label maps resolve against the CSV's folder
            table["label"] = [p if pd.isna(p) else self._label_path(p) for p in table["label"]]
        files = ("image", "label") if task == "segment" else ("image",)
        table = self.check_rows(table, self.csv, file_columns=files, label_column="label", required=("label",))
        self.encoding: LabelEncoding | None = None
        if task == "classify":
            self.encoding = LabelEncoding(table["label"].tolist(), str(self.csv))
        table["split"] = assign_splits(table, self.csv, seed)
        self.table = table
        self.crop = self.image_size if spatial_dims == 3 else (1, *self.image_size)
        settings = CTPreprocessing(spacing=tuple(float(s) for s in spacing), min_size=self.crop)
        labels = ["label"] if task == "segment" else []
        # CTPreprocessingd's steps, not the Compose itself: CacheDataset caches up to the first Randomizable, which
        # a Compose is, and flattening one would skip its loader.
        steps = CTPreprocessingd(settings, label_keys=labels, load=False).transforms
        self.preprocess = [LoadCTd("image", labels), *steps]
        self._datasets: dict[str, SkipBadItems] = {}

    def _label_path(self, value: Any) -> str:
        path = Path(str(value).strip()).expanduser()
        return str(path if path.is_absolute() else self.csv.resolve().parent / path)

    @property
    def num_outputs(self) -> int | None:
        """Classification outputs these labels need (1 for two classes); None for segmentation."""
        return None if self.encoding is None else self.encoding.num_outputs

    def items(self, split: str) -> list[dict[str, Any]]:
        rows = self.table[self.table["split"] == split]
        items = []
        for image, label in zip(rows["image"], rows["label"], strict=True):
            item = {"image": image, "path": image, "case_id": Path(image).name.split(".")[0]}
            item["label"] = label if self.encoding is None else self.encoding(label)
            items.append(item)
        return items

    def transform(self, split: str) -> Compose:
        steps: list[Any] = list(self.preprocess)
        segment = self.task == "segment"
        if segment:
            steps.append(LabelsBelow(int(self.num_classes or 0)))
        steps.append(Windowd(self.window))
        keys = ["image", "label"] if segment else ["image"]
        if split == "train":
            if segment:
                steps.append(
                    RandCropByLabelClassesd(
                        keys=keys,
                        label_key="label",
                        spatial_size=self.crop,
                        ratios=[1] * int(self.num_classes or 0),
                        num_classes=self.num_classes,
                        num_samples=self.samples_per_scan,
                        warn=False,
                    )
                )
            else:
                steps.append(RandSpatialCropd(keys=keys, roi_size=self.crop, random_size=False))
            if self.spatial_dims == 2:
                steps.append(SqueezeDimd(keys=keys, dim=1, update_meta=False))  # (1, 1, y, x) -> (1, y, x)
            steps.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=-1))
        elif not segment:  # classification scores the centre: in-plane in 2D (every slice), a patch in 3D
            roi = self.image_size if self.spatial_dims == 3 else (-1, *self.image_size)
            steps.append(CenterSpatialCropd(keys=keys, roi_size=roi))
        return Compose(steps)

    def dataset(self, split: str) -> SkipBadItems:
        """The split's items, preprocessed once and kept in memory; a scan that fails to load is skipped."""
        if split not in self._datasets:
            items = self.items(split)
            if not items:
                raise CTFMError(f"{self.csv}: no scans in the {split!r} split")
            cached = _SkippingCacheDataset(
                items, transform=self.transform(split), cache_rate=self.cache_rate, progress=False
            )
            self._datasets[split] = self.skipping(split, cached, [item["path"] for item in items])
        return self._datasets[split]

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        scans_per_batch = max(1, self.batch_size // self.samples_per_scan) if train else 1
        dataset = self.dataset(split)
        sampler = RandomSampler(dataset, replacement=True, num_samples=self.steps_per_epoch * scans_per_batch)
        return self.loader(dataset, scans_per_batch, sampler=sampler if train else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class _LoadFailure:
    """What :class:`_SkippingCacheDataset` caches for an item that failed to load: the error, raised when served."""

    def __init__(self, error: Exception):
        self.error = error


class _SkippingCacheDataset(CacheDataset):
    """A ``CacheDataset`` whose caching keeps going past a bad scan: serving it raises its error, for SkipBadItems."""

    def _load_cache_item(self, idx: int) -> Any:
        try:
            return super()._load_cache_item(idx)
        except Exception as err:  # noqa: BLE001 - bad data is kept to be skipped when served; a bug is raised
            if load_problem(err) is None:
                raise
            return _LoadFailure(err)

    def _transform(self, index: int) -> Any:
        cached = self._cache[index] if self._cache is not None and 0 <= index < self.cache_num else None
        if isinstance(cached, _LoadFailure):
            raise cached.error
        return super()._transform(index)
