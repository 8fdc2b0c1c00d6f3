"""TotalSegmentator v2 as published: ``sXXXX/ct.nii.gz``, ``sXXXX/segmentations/<class>.nii.gz``, ``meta.csv``.

Training needs one label map per subject, not 117 binary masks, so the selected masks are merged once (label = the
class's position among the selected classes, published order, background 0) and cached beside the dataset. The
cache remembers the size and modification time of every mask it merged: a changed mask is merged again. Everything
a run needs is checked when the run is set up, by file header only, so a subject with a missing or misaligned mask
is skipped with its ``meta.csv`` line, subject and file named, instead of failing later inside a DataLoader worker.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from ctfm.atomic import write_atomically
from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES
from ctfm.data.datalist import SPLITS
from ctfm.data.segmentation import SegmentationDataModule
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.transforms.preprocess import CTPreprocessing

META_NAME = "meta.csv"
#: Largest distance (mm) between a mask's affine and its CT's that still counts as the same grid.
GRID_TOLERANCE_MM = 1e-3


def selected_class_names(classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """Output channel names, background first: ``classes`` in the order given, or all 117 in published order.

    Args:
        classes: TotalSegmentator class names, or None for all 117.

    Returns:
        ``("background", ...)``; an unknown name is refused.
    """
    if classes is None:
        return ("background", *TOTALSEGMENTATOR_CLASSES)
    if isinstance(classes, str):
        classes = [classes]
    unknown = [name for name in classes if name not in TOTALSEGMENTATOR_CLASSES]
    if unknown:
        raise CTFMError(f"unknown TotalSegmentator classes {unknown}; see ctfm.data.classes.TOTALSEGMENTATOR_CLASSES")
    if len(set(classes)) != len(classes):
        raise CTFMError(f"classes lists a name twice: {list(classes)}")
    if not classes:
        raise CTFMError("classes is empty; give class names or null for all 117")
    return ("background", *classes)


@dataclass(frozen=True)
class Subject:
    """One subject of the dataset: its id, split, CT and the folder of its masks."""

    image_id: str
    split: str
    ct: Path
    segmentations: Path

    def mask(self, name: str) -> Path:
        return self.segmentations / f"{name}.nii.gz"


@dataclass
class TotalSegmentatorDataset:
    """The subjects of ``data_dir`` by split (``meta.csv`` order), for the selected ``classes``."""

    data_dir: Path
    class_names: tuple[str, ...]
    subjects: list[Subject] = field(default_factory=list)

    def split(self, name: str, first: int | None = None) -> list[Subject]:
        """Subjects of split ``name``; ``first`` keeps the first N (few-shot training)."""
        chosen = [s for s in self.subjects if s.split == name]
        if first is not None:
            if first < 1:
                raise CTFMError(f"fewshot must be a positive number of subjects, got {first}")
            if first > len(chosen):
                raise CTFMError(f"fewshot={first} but {self.data_dir} has only {len(chosen)} {name} subjects")
            chosen = chosen[:first]
        return chosen


def read_totalsegmentator(data_dir: str | Path, classes: Sequence[str] | None = None) -> TotalSegmentatorDataset:
    """Read ``meta.csv`` (``;``-separated, columns ``image_id`` and ``split``) of a TotalSegmentator v2 folder."""
    data_dir = Path(data_dir)
    meta = data_dir / META_NAME
    if not meta.is_file():
        raise InvalidScanError(meta, f"no {META_NAME}: not a TotalSegmentator v2 folder")
    try:
        table = pd.read_csv(meta, sep=";", dtype=str)
    except (OSError, ValueError) as err:
        raise InvalidScanError(meta, f"cannot be read as a ';'-separated table: {err}") from err
    missing = [column for column in ("image_id", "split") if column not in table.columns]
    if missing:
        raise InvalidScanError(meta, f"has no column {', '.join(missing)} (columns: {', '.join(table.columns)})")
    subjects = []
    for row, (image_id, split) in enumerate(zip(table["image_id"], table["split"], strict=True), start=2):
        if split not in SPLITS:
            raise InvalidScanError(meta, f"line {row}: split {split!r} of {image_id} is not one of {SPLITS}")
        folder = data_dir / str(image_id)
        subjects.append(Subject(str(image_id), split, folder / "ct.nii.gz", folder / "segmentations"))
    return TotalSegmentatorDataset(data_dir, selected_class_names(classes), subjects)


def check_subject(subject: Subject, class_names: Sequence[str]) -> None:
    """Raise InvalidScanError naming the file unless the CT and every selected mask exist on the same grid."""
    ct = _header(subject.ct, subject)
    for name in class_names[1:]:
        path = subject.mask(name)
        mask = _header(path, subject)
        if mask.shape[:3] != ct.shape[:3]:
            raise InvalidScanError(
                path,
                f"subject {subject.image_id}: mask shape {mask.shape[:3]} differs from its ct.nii.gz {ct.shape[:3]}",
            )
        if float(np.abs(mask.affine - ct.affine).max()) > GRID_TOLERANCE_MM:
            raise InvalidScanError(path, f"subject {subject.image_id}: mask affine differs from its ct.nii.gz")


def merged_label_map(subject: Subject, class_names: Sequence[str], cache_dir: str | Path) -> Path:
    """The subject's masks merged into one label map (cached; rebuilt when a mask or the selection changes).

    A voxel claimed by two masks gets the later class in ``class_names``.
    """
    selection = hashlib.sha1("\n".join(class_names).encode()).hexdigest()[:10]
    target = Path(cache_dir) / subject.image_id / f"labels_{selection}.nii.gz"
    manifest_path = target.with_name(f"labels_{selection}.json")
    sources = [subject.ct, *(subject.mask(name) for name in class_names[1:])]
    manifest = {str(p.name): [p.stat().st_size, p.stat().st_mtime_ns] for p in sources if p.exists()}
    if target.is_file() and manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return target
    check_subject(subject, class_names)
    ct = _header(subject.ct, subject)
    dtype = np.uint8 if len(class_names) <= 256 else np.int16
    labels = np.zeros(ct.shape[:3], dtype=dtype)
    for value, name in enumerate(class_names[1:], start=1):
        path = subject.mask(name)
        mask = np.asarray(_header(path, subject).dataobj)
        while mask.ndim > 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise InvalidScanError(
                path, f"subject {subject.image_id}: a binary mask must hold 0 and 1, found {mask.min()}..{mask.max()}"
            )
        labels[mask > 0] = value
    target.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(labels, ct.affine)
    write_atomically(target, lambda tmp: nib.save(image, str(tmp)))
    write_atomically(manifest_path, lambda tmp: tmp.write_text(json.dumps(manifest)))
    return target


def _header(path: Path, subject: Subject) -> nib.Nifti1Image:
    if not path.is_file():
        raise InvalidScanError(path, f"subject {subject.image_id}: file is missing")
    try:
        image = nib.load(path)
    except Exception as err:  # nibabel raises several types for a damaged header
        raise InvalidScanError(path, f"subject {subject.image_id}: cannot be read as NIfTI ({err})") from err
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image is one too
        raise InvalidScanError(path, f"subject {subject.image_id}: is a {type(image).__name__}, not NIfTI")
    return image


class TotalSegmentatorDataModule(SegmentationDataModule):
    """TotalSegmentator v2 folder -> segmentation batches; masks merged and cached in ``prepare_data``.

    Args:
        data_dir: the dataset folder (``meta.csv`` and ``sXXXX/`` subjects).
        classes: class names to train on (remapped to 1..K in the order given), or None for all 117.
        fewshot: train on the first N training subjects of ``meta.csv`` (the paper's 5, 10, 20), None for all.
        cache_dir: where merged label maps go; default ``<data_dir>/ctfm_cache``.
        predict_split: the split ``predict`` segments (``train``, ``val``, ``test`` or ``all``).
        preprocessing: the canonical preprocessing (:class:`~ctfm.transforms.preprocess.CTPreprocessing`).
        patch_size: the training patch (z, y, x) in voxels.
        kwargs: passed to :class:`~ctfm.data.segmentation.SegmentationDataModule` (``batch_size``, ...).
    """

    def __init__(
        self,
        data_dir: str | Path,
        preprocessing: CTPreprocessing,
        patch_size: Sequence[int],
        classes: Sequence[str] | None = None,
        fewshot: int | None = None,
        cache_dir: str | Path | None = None,
        predict_split: str = "test",
        **kwargs: Any,
    ):
        self.class_names = selected_class_names(classes)
        super().__init__(preprocessing, patch_size, num_classes=len(self.class_names), **kwargs)
        if predict_split not in (*SPLITS, "all"):
            raise CTFMError(f"predict_split must be one of {(*SPLITS, 'all')}, got {predict_split!r}")
        self.data_dir = Path(data_dir)
        self.fewshot = fewshot
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "ctfm_cache"
        self.predict_split = predict_split
        self.dataset = read_totalsegmentator(self.data_dir, classes)
        self.splits = {
            "train": self.dataset.split("train", fewshot),
            "val": self.dataset.split("val"),
            "test": self.dataset.split("test"),
        }
        lines = {s.image_id: line for line, s in enumerate(self.dataset.subjects, start=2)}
        for split, subjects in self.splits.items():
            usable = []
            for subject in subjects:
                try:
                    check_subject(subject, self.class_names)  # at set-up, by header: names the subject and file
                except InvalidScanError as err:
                    self.skip_entry(f"{self.data_dir / META_NAME}: line {lines[subject.image_id]}", str(err))
                    continue
                usable.append(subject)
            self.splits[split] = usable
        if not self.splits["train"]:
            raise CTFMError(f"{self.data_dir}: no usable training subject (see the warnings above)")

    def prepare_data(self) -> None:
        for split in ("train", "val", "test"):
            for subject in self.splits[split]:
                merged_label_map(subject, self.class_names, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            self.items[split] = [
                {
                    "image": str(s.ct),
                    "label": str(merged_label_map(s, self.class_names, self.cache_dir)),
                    "image_id": s.image_id,
                }
                for s in self.splits[split]
            ]
        chosen = self.dataset.subjects if self.predict_split == "all" else self.dataset.split(self.predict_split)
        self.items["predict"] = [{"image": str(s.ct), "image_id": s.image_id} for s in chosen]
