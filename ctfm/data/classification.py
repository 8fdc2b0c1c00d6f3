"""Datalists of labelled scans and the Lightning data module of whole-scan classification.

A datalist is a CSV of ``image,label`` (relative paths resolve against the CSV's folder) with an optional ``split``
column (train / val / test); without one, a seeded 8:1:1 split is drawn. Everything a user can get wrong in the
CSV (a missing column, a missing scan, a blank label, a label column with a single class) is found when the module
is built, before any training starts, and reported with the CSV's line number (:mod:`ctfm.data.base`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import Dataset
from torch.utils.data import DataLoader

from ctfm.data.base import DatalistDataModule, require_datalist
from ctfm.data.datalist import SPLITS, UNKNOWN_LABEL, LabelEncoding, assign_splits, read_datalist
from ctfm.errors import CTFMError


class ClassificationDataModule(DatalistDataModule):
    """``image,label[,split]`` CSV -> batches ``{"image": (B, 1, ...), "label": (B,), "path": [B paths]}``.

    Rows are checked when the module is built (:class:`~ctfm.data.base.DatalistDataModule`): a missing scan is
    skipped with a warning naming its CSV line; a blank label leaves its row out of training and evaluation (it is
    still scored by ``lighter predict``); a bad split value stops. A scan that fails to load during the run is
    skipped and counted.

    Args:
        datalist: the CSV. Labels may be missing only for ``lighter predict``.
        train_transforms: dict transform from ``{"image": path}`` to a fixed-size image (the recipes build it:
            canonical preprocessing, or the head-CT windows).
        eval_transforms: the same without augmentation, for validation, test and predict.
        predict_split: the rows ``lighter predict`` scores: ``all`` or one of train / val / test.
        external_test: every row is a test scan (an external test set such as CQ500), whatever its split column.
        label_column: the column of labels.
        batch_size: items per batch.
        num_workers: DataLoader worker processes.
        seed: seeds the 8:1:1 split drawn when there is no ``split`` column, and the workers.
    """

    def __init__(
        self,
        datalist: str | Path,
        train_transforms: Callable[[dict[str, Any]], dict[str, Any]],
        eval_transforms: Callable[[dict[str, Any]], dict[str, Any]],
        label_column: str = "label",
        batch_size: int = 2,
        num_workers: int = 0,
        seed: int = 0,
        predict_split: str = "all",
        external_test: bool = False,
    ):
        super().__init__(num_workers=num_workers, seed=seed)
        require_datalist(datalist, "columns image,label[,split]")
        if predict_split not in ("all", *SPLITS):
            raise ValueError(f"predict_split must be 'all' or one of {SPLITS}, got {predict_split!r}")
        self.csv = Path(datalist)
        table = self.check_rows(read_datalist(self.csv, keep_blank=True), self.csv)
        self.labelled = label_column in table.columns
        self.encoding = LabelEncoding(table[label_column].tolist(), str(self.csv)) if self.labelled else None
        table["split"] = "test" if external_test else assign_splits(table, self.csv, seed)
        if self.labelled:  # a blank label is scored by predict but never trained or evaluated on
            for index in table.index[table[label_column].isna()]:
                self.skip_row(self.csv, index, f"no {label_column!r} value (kept for predict only)")
        self.table = table
        self.label_column = label_column
        self.train_transforms = train_transforms
        self.eval_transforms = eval_transforms
        self.batch_size = batch_size
        self.predict_split = predict_split

    @property
    def num_outputs(self) -> int | None:
        """Outputs the network needs for these labels (None without labels)."""
        return None if self.encoding is None else self.encoding.num_outputs

    @property
    def describe_labels(self) -> str:
        return "" if self.encoding is None else f"classes {self.encoding.classes}"

    def items(self, split: str) -> list[dict[str, Any]]:
        """The dataset items of ``split`` (``all`` for every row): image path twice (one becomes the tensor).

        Rows with a blank label belong to ``all`` only.
        """
        rows = self.table if split == "all" else self.table[self.table["split"] == split]
        if self.labelled and split != "all":
            rows = rows[rows[self.label_column].notna()]
        labels = rows[self.label_column] if self.labelled else [np.nan] * len(rows)
        return [
            {"image": path, "path": path, "label": self.encoding(label) if self.encoding else UNKNOWN_LABEL}
            for path, label in zip(rows["image"], labels, strict=True)
        ]

    def _loader(self, split: str, transforms: Callable, shuffle: bool = False) -> DataLoader:
        items = self.items(split)
        if not items:
            raise CTFMError(f"{self.csv}: no scans in the {split!r} split")
        if split != "all" and split != "train" and not self.labelled:
            raise CTFMError(f"{self.csv}: no {self.label_column!r} column, so the {split!r} split cannot be scored")
        dataset = self.skipping(split, Dataset(items, transform=transforms), [item["path"] for item in items])
        return self.loader(
            dataset, self.batch_size, shuffle=shuffle, drop_last=shuffle and len(items) > self.batch_size
        )

    def train_dataloader(self) -> DataLoader:
        if not self.labelled:
            raise CTFMError(f"{self.csv}: no {self.label_column!r} column: training needs labels")
        return self._loader("train", self.train_transforms, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_transforms)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_transforms)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split, self.eval_transforms)
