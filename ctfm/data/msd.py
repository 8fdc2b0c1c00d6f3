"""Medical Segmentation Decathlon tasks as published: ``dataset.json``, ``imagesTr/``, ``labelsTr/``.

The label names come from ``dataset.json`` (task 03 liver: background, liver, cancer; 08 hepatic vessel:
background, vessel, tumour; ...), and so does the tumour label, which the per-case metrics report. Validation cases
are a seeded fraction of ``training`` or a JSON list of case ids. Every file ``dataset.json`` names is checked when
the module is built: an entry whose file is missing is skipped, named with its index; every label map's values are
checked against ``dataset.json``'s labels when the run is set up (read once, then cached by size and time), and a
case holding an undefined value is skipped, named with its file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapLabelValued

from ctfm.data.segmentation import SegmentationDataModule, check_label_values
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.transforms.preprocess import CTPreprocessing

_TUMOUR = re.compile(r"tumou?r|cancer|lesion|nodule", re.IGNORECASE)


@dataclass(frozen=True)
class MSDTask:
    """A Decathlon task: its label names by value, the tumour label, and the labelled cases."""

    data_dir: Path
    labels: dict[int, str]
    tumour_label: int
    cases: list[dict[str, str]]
    test_images: list[str]
    #: Training entries left out, as ``(where, problem)``: ``("dataset.json: training[2]", "label ...: no such file")``.
    missing: list[tuple[str, str]]


def _case_id(path: str) -> str:
    name = Path(path).name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else Path(path).stem


def read_msd(data_dir: str | Path) -> MSDTask:
    """Read ``dataset.json``; an entry whose file is missing is left out and listed in ``missing``."""
    data_dir = Path(data_dir)
    document_path = data_dir / "dataset.json"
    try:
        document = json.loads(document_path.read_text())
    except (OSError, ValueError) as err:
        raise InvalidScanError(document_path, f"cannot be read as the task's dataset.json: {err}") from err
    try:
        labels = {int(value): str(name) for value, name in document["labels"].items()}
        training = document["training"]
    except (KeyError, AttributeError, ValueError) as err:
        raise InvalidScanError(document_path, f"needs 'labels' (value -> name) and 'training' entries: {err}") from err
    tumours = [value for value, name in labels.items() if value and _TUMOUR.search(name)]
    if len(tumours) != 1:
        raise InvalidScanError(document_path, f"cannot tell the tumour label among {labels}")
    cases = []
    missing = []
    for index, entry in enumerate(training):
        case = {}
        for key in ("image", "label"):
            path = data_dir / str(entry.get(key, "")).removeprefix("./")
            if not path.is_file():
                missing.append(
                    (f"{document_path}: training[{index}]", f"{key} {entry.get(key)!r}: no such file {path}")
                )
                break
            case[key] = str(path)
        else:
            case["image_id"] = _case_id(case["image"])
            cases.append(case)
    if not cases:
        raise InvalidScanError(document_path, f"none of the {len(training)} training entries has its files")
    tests = [str(data_dir / str(p).removeprefix("./")) for p in document.get("test", [])]
    return MSDTask(data_dir, labels, tumours[0], cases, [p for p in tests if Path(p).is_file()], missing)


def msd_class_names(data_dir: str | Path, classes: Sequence[str] | None = None) -> tuple[str, ...]:
    """Output channel names, background first: the task's labels, or ``classes`` among them.

    Args:
        data_dir: the task folder (``dataset.json``).
        classes: label names to keep, or None for all.

    Returns:
        ``("background", ...)``.
    """
    labels = read_msd(data_dir).labels
    if classes is None:
        return tuple(labels[v] for v in sorted(labels))
    unknown = [c for c in classes if c not in labels.values()]
    if unknown:
        raise CTFMError(f"{data_dir}: no labels {unknown} in dataset.json (labels: {list(labels.values())})")
    return (labels[0], *classes)


class MSDDataModule(SegmentationDataModule):
    """An MSD task folder -> segmentation batches; ``test`` and ``predict`` use the validation cases.

    Args:
        data_dir: the task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        classes: label names to train on (remapped to 1..K; others become background), None for all.
        fewshot: train on the first N training cases.
        val_fraction: share of cases held out for validation, drawn with ``seed``; ignored with ``val_cases``.
        val_cases: a JSON file listing the case ids (``liver_3``) to validate on.
        cache_dir: where the label values read at set-up are remembered; default ``<data_dir>/ctfm_cache``.
        preprocessing: the canonical preprocessing (:class:`~ctfm.transforms.preprocess.CTPreprocessing`).
        patch_size: the training patch (z, y, x) in voxels.
        seed: seeds the validation draw.
        kwargs: passed to :class:`~ctfm.data.segmentation.SegmentationDataModule` (``batch_size``, ...).
    """

    def __init__(
        self,
        data_dir: str | Path,
        preprocessing: CTPreprocessing,
        patch_size: Sequence[int],
        classes: Sequence[str] | None = None,
        fewshot: int | None = None,
        val_fraction: float = 0.2,
        val_cases: str | Path | None = None,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        **kwargs: Any,
    ):
        self.task = read_msd(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else Path(data_dir) / "ctfm_cache"
        self.class_names = msd_class_names(data_dir, classes)
        super().__init__(preprocessing, patch_size, num_classes=len(self.class_names), **kwargs)
        for where, problem in self.task.missing:
            self.skip_entry(where, problem)
        by_name = {name: value for value, name in self.task.labels.items()}
        self.label_values = {value: 0 for value in self.task.labels}
        self.label_values.update({by_name[name]: new for new, name in enumerate(self.class_names[1:], start=1)})
        cases = self.task.cases
        if val_cases is not None:
            wanted = set(json.loads(Path(val_cases).read_text()))
            unknown = wanted - {c["image_id"] for c in cases}
            if unknown:
                raise InvalidScanError(val_cases, f"case ids not in dataset.json: {sorted(unknown)}")
            val = [c for c in cases if c["image_id"] in wanted]
        else:
            order = np.random.default_rng(seed).permutation(len(cases))
            val = [cases[i] for i in sorted(order[: max(1, round(val_fraction * len(cases)))])]
        train = [c for c in cases if c not in val]
        if fewshot is not None:
            if not 0 < fewshot <= len(train):
                raise CTFMError(f"fewshot={fewshot} but {data_dir} has {len(train)} training cases")
            train = train[:fewshot]
        self.items.update(train=train, val=val, test=val)
        self.items["predict"] = [{"image": c["image"], "image_id": c["image_id"]} for c in val]

    def setup(self, stage: str | None = None) -> None:
        """Skip, naming the case and file, a case whose label map holds a value ``dataset.json`` does not define."""
        if stage == "predict":
            return
        bad = set()
        for case in {c["image_id"]: c for c in [*self.items["train"], *self.items["val"]]}.values():
            try:
                check_label_values([case], self.task.labels, self.cache_dir)
            except InvalidScanError as err:
                self.skip_entry(f"{self.task.data_dir / 'dataset.json'}: case {case['image_id']}", str(err))
                bad.add(case["image_id"])
        for split in ("train", "val", "test"):
            self.items[split] = [c for c in self.items[split] if c["image_id"] not in bad]

    def label_steps(self) -> list[Any]:
        """The task's label values -> 0..K: selected classes in order, the others background."""
        if all(value == new for value, new in self.label_values.items()):
            return []
        return [
            MapLabelValued(
                keys="label", orig_labels=list(self.label_values), target_labels=list(self.label_values.values())
            )
        ]
