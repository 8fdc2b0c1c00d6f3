"""The data module every segmentation recipe shares: canonical preprocessing, label-balanced patches, inversion.

Items are dicts ``{"image": CT path, "label": label-map path, "image_id": name}``. Every split goes through
:class:`~ctfm.transforms.dictionary.CTPreprocessingd`, so label maps follow the image and training sees what the
encoder saw; training then draws patches centred on foreground classes (``RandCropByLabelClassesd`` with background
ratio 0) and augments them; validation and test see whole scans (one per batch, for the sliding window); predict
preprocesses the image only and :meth:`invert` puts a prediction back on the input's own grid.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from monai.data import Dataset, MetaTensor
from monai.transforms import (
    Compose,
    Invertd,
    MapTransform,
    RandAffined,
    RandCropByLabelClassesd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)
from torch.utils.data import DataLoader

from ctfm.atomic import write_atomically
from ctfm.data.base import DatalistDataModule
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.transforms.dictionary import CTPreprocessingd
from ctfm.transforms.preprocess import CTPreprocessing

KEYS = ("image", "label")


def segmentation_augmentation(patch_size: Sequence[int], num_classes: int, samples_per_scan: int) -> list[Any]:
    """Label-balanced patches, then random affine, smoothing, intensity scale and shift, and noise."""
    return [
        RandCropByLabelClassesd(
            keys=KEYS,
            label_key="label",
            spatial_size=tuple(patch_size),
            ratios=[0, *([1] * (num_classes - 1))],
            num_classes=num_classes,
            num_samples=samples_per_scan,
            warn=False,
        ),
        RandAffined(
            keys=KEYS,
            prob=0.2,
            rotate_range=(0.26, 0.26, 0.26),
            scale_range=(0.2, 0.2, 0.2),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
        RandGaussianNoised(keys="image", prob=0.2, std=0.01),
    ]


class LabelsBelow(MapTransform):
    """Refuse a label map holding a value the network has no output for, naming its file."""

    def __init__(self, num_classes: int, key: str = "label"):
        super().__init__([key])
        self.num_classes = num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.keys:
            label = data[key]
            highest = int(label.max()) if label.numel() else 0
            if highest >= self.num_classes:
                source = str(label.meta.get("filename_or_obj", key) if isinstance(label, MetaTensor) else key)
                raise InvalidScanError(
                    source, f"holds label {highest}, outside the {self.num_classes - 1} selected classes (1..K)"
                )
        return dict(data)


logger = logging.getLogger(__name__)

#: File name of the cache of label values that :func:`check_label_values` keeps.
LABEL_VALUES_CACHE = "label_values.json"


def check_label_values(items: Iterable[Mapping[str, Any]], allowed: Iterable[int], cache_dir: str | Path) -> None:
    """Raise InvalidScanError naming the case and its label file if a label map holds a value not in ``allowed``.

    Each label map is read once: its distinct values are remembered in ``<cache_dir>/label_values.json`` with the
    file's size and modification time, so a later run reads only files that changed. This runs when a run is set
    up, so a bad label stops it before training rather than surfacing inside a DataLoader worker.
    """
    import nibabel as nib
    import numpy as np
    from nibabel.spatialimages import SpatialImage

    cache_path = Path(cache_dir) / LABEL_VALUES_CACHE
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except ValueError:
        cache = {}  # a damaged cache is rebuilt
    allowed = {int(v) for v in allowed}
    changed = False
    for item in items:
        path = Path(item["label"])
        stat = path.stat()
        key = str(path.resolve())
        entry = cache.get(key)
        if entry is None or entry["size"] != stat.st_size or entry["mtime_ns"] != stat.st_mtime_ns:
            try:
                image = nib.load(path)
                if not isinstance(image, SpatialImage):
                    raise TypeError(f"a {type(image).__name__} holds no voxels")
                values = np.unique(np.asarray(image.dataobj))
            except Exception as err:  # nibabel raises several types for a damaged file
                raise InvalidScanError(
                    path, f"case {item.get('image_id', path.name)}: unreadable label ({err})"
                ) from err
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "values": [float(v) for v in values]}
            cache[key] = entry
            changed = True
        outside = sorted(v for v in entry["values"] if v != int(v) or int(v) not in allowed)
        if outside:
            shown = ", ".join(f"{v:g}" for v in outside)
            raise InvalidScanError(
                path,
                f"case {item.get('image_id', path.name)}: holds label {shown}, not one of the defined labels "
                f"{sorted(allowed)}",
            )
    if changed:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache_path, lambda tmp: tmp.write_text(json.dumps(cache)))


class SegmentationDataModule(DatalistDataModule):
    """Lists of item dicts per stage -> preprocessed, augmented batches; subclasses fill the lists in ``setup``.

    A subject whose files fail to load (or hold a label outside the selected classes) is skipped, named and
    counted (:class:`~ctfm.data.base.DatalistDataModule`): replaced by another in training, left out of the
    metrics in validation and test.

    Args:
        preprocessing: the canonical settings (the recipes pass ``_base/preprocessing.yaml``'s).
        patch_size: training patch (z, y, x); scans smaller than it are padded with air.
        num_classes: output channels, background included (for the label-balanced crop).
        batch_size: training patches per step (``samples_per_scan`` per scan read).
    """

    def __init__(
        self,
        preprocessing: CTPreprocessing,
        patch_size: Sequence[int],
        num_classes: int,
        batch_size: int = 2,
        samples_per_scan: int = 1,
        num_workers: int = 4,
    ):
        super().__init__(num_workers=num_workers)
        self.preprocessing = preprocessing
        self.patch_size = tuple(patch_size)
        self.num_classes = int(num_classes)
        self.batch_size = batch_size
        self.samples_per_scan = samples_per_scan
        self.items: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": [], "predict": []}
        self.labelled = CTPreprocessingd(preprocessing, label_keys=["label"])
        self.predict_transform = CTPreprocessingd(preprocessing)

    def label_steps(self) -> list[Any]:
        """Transforms of the label map between preprocessing and the range check (a remap, say); none here."""
        return []

    def transform(self, stage: str) -> Any:
        if stage == "predict":
            return self.predict_transform
        labelled = [self.labelled, *self.label_steps(), LabelsBelow(self.num_classes)]
        if stage == "train":
            labelled += segmentation_augmentation(self.patch_size, self.num_classes, self.samples_per_scan)
        return Compose(labelled)

    def _loader(self, stage: str) -> DataLoader:
        train = stage == "train"
        scans_per_batch = max(1, self.batch_size // self.samples_per_scan) if train else 1
        items = self.items[stage]
        if not items:
            raise CTFMError(f"no subjects to {stage} on (see the warnings above for the ones skipped)")
        dataset = self.skipping(stage, Dataset(items, transform=self.transform(stage)), [i["image"] for i in items])
        return self.loader(dataset, scans_per_batch, shuffle=train, persistent_workers=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict")

    def invert(self, item: Mapping[Hashable, Any]) -> MetaTensor:
        """``item["pred"]`` (a label map on the preprocessed grid) back on ``item["image"]``'s input grid."""
        inverted = Invertd(keys="pred", transform=self.predict_transform, orig_keys="image", nearest_interp=True)(
            dict(item)
        )["pred"]
        return cast(MetaTensor, inverted.to(torch.int64) if isinstance(inverted, torch.Tensor) else inverted)
