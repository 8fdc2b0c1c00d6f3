"""``ctfm segment`` on many scans: label maps, per-class masks, statistics and previews on disk, bad scans reported.

Per input ``<name>`` (:func:`ctfm.io.naming.output_names`: the file name without its extension, or the DICOM folder's
name, prefixed with parent folders where inputs share it) in the output folder:
``<name>.nii.gz`` (integer labels on the input's grid) with ``<name>.json`` naming the values, ``<name>/<class>.nii.gz``
binary masks with ``split_masks`` (as TotalSegmentator writes them), ``<name>.png`` with ``preview``; one
``statistics.csv`` for the run (a row per input and class: volume in ml and mean HU inside the class). With
``output_type="dicom-seg"`` (DICOM series inputs only), ``<name>.seg.dcm``, a DICOM Segmentation object of the series,
replaces ``<name>.nii.gz`` and its ``.json``. A run that would overwrite any of these stops before it starts, unless
``overwrite``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from tqdm.auto import tqdm

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.io.dicom_seg import OutputType, check_output_type, model_name, require_dicom_series, write_dicom_seg
from ctfm.io.label_maps import write_label_map
from ctfm.io.naming import output_names
from ctfm.io.reader import read_ct
from ctfm.outputs import output_folder, refuse_overwrite
from ctfm.reports import ReportRow, RunReport
from ctfm.segmentation import OVERLAP, ROI_SIZE, Segmenter, load_segmenter, segment

logger = logging.getLogger(__name__)


@dataclass
class SegmentReport(RunReport):
    """Scans segmented and scans skipped with the reason."""

    STATUSES = {"segmented": "segmented", "skipped": "skipped"}
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "image"

    out: Path
    segmented: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(path, "segmented") for path in self.segmented),
            *(ReportRow(path, "skipped", reason) for path, reason in self.skipped),
        ]

    def headline(self) -> str:
        return super().headline() + f"; outputs in {self.out}"


def class_statistics(
    labels: MetaTensor, hu: torch.Tensor, class_names: Sequence[str], values: Sequence[int]
) -> list[dict[str, Any]]:
    """Rows ``label, class, volume_ml, mean_hu`` for ``values`` of a label map and its HU scan (same grid)."""
    voxel_ml = float(abs(np.linalg.det(np.asarray(labels.affine, dtype=np.float64)[:3, :3]))) / 1000.0
    flat_labels = labels.reshape(-1).to(torch.int64)
    flat_hu = hu.reshape(-1).to(torch.float64)
    counts = torch.bincount(flat_labels, minlength=len(class_names))
    sums = torch.bincount(flat_labels, weights=flat_hu, minlength=len(class_names))
    rows = []
    for value in values:
        count = int(counts[value])
        mean = float(sums[value]) / count if count else float("nan")
        rows.append({"label": value, "class": class_names[value], "volume_ml": count * voxel_ml, "mean_hu": mean})
    return rows


def segment_to_files(
    inputs: Iterable[str | Path],
    out: str | Path,
    *,
    model: str | Path | Segmenter = "ct-fm-whole-body",
    roi_size: Sequence[int] = ROI_SIZE,
    overlap: float = OVERLAP,
    batch_size: int = 1,
    device: str = "cpu",
    classes: Sequence[str] | None = None,
    split_masks: bool = False,
    largest_component: bool = True,
    preview: bool = False,
    overwrite: bool = False,
    output_type: OutputType = "nifti",
) -> SegmentReport:
    """Segment each input into ``out`` (see the module docstring); a bad input is skipped and reported."""
    check_output_type(output_type)
    inputs = list(inputs)
    output_stems = output_names(inputs)
    out = output_folder(out)
    planned = [out / "statistics.csv"]
    for name in output_stems:
        if output_type == "dicom-seg":
            planned += [out / f"{name}.seg.dcm"]
        else:
            planned += [out / f"{name}.nii.gz", out / f"{name}.json"]
        planned += [out / name] if split_masks else []
        planned += [out / f"{name}.png"] if preview else []
    refuse_overwrite(planned, overwrite)
    segmenter = load_segmenter(model, device=device)
    names = segmenter.class_names
    values = list(range(1, len(names))) if classes is None else [names.index(c) for c in classes if c in names]
    if classes is not None and len(values) != len(classes):
        raise CTFMError(f"the model has no classes {[c for c in classes if c not in names]}")
    report = SegmentReport(out=out)
    statistics: list[dict] = []
    for path, name in zip(tqdm(inputs, desc="segmenting", unit="scan"), output_stems):
        try:
            if output_type == "dicom-seg":
                require_dicom_series(path)
            hu = read_ct(path)
            if not bool((hu > segmenter.preprocessing.body_threshold_hu).any()):
                raise InvalidScanError(
                    path, f"no voxel above {segmenter.preprocessing.body_threshold_hu:g} HU: no body to segment"
                )
            labels = segment(
                segmenter,
                hu,
                roi_size=roi_size,
                overlap=overlap,
                batch_size=batch_size,
                device=device,
                classes=classes,
                largest_component=largest_component,
            )
        except InvalidScanError as err:
            logger.warning("skipping %s", err)
            report.skipped.append((str(path), err.problem))
            continue
        affine = np.asarray(hu.affine, dtype=np.float64)
        array = labels[0].numpy()
        if output_type == "dicom-seg":
            settings = {"roi_size": " ".join(map(str, roi_size)), "overlap": str(overlap),
                        "largest_component": str(largest_component)}  # fmt: skip
            try:
                write_dicom_seg(array, path, names, out / f"{name}.seg.dcm", affine=affine,
                                algorithm_name=model_name(model), parameters=settings)  # fmt: skip
            except InvalidScanError as err:
                logger.warning("skipping %s", err)
                report.skipped.append((str(path), err.problem))
                continue
        else:
            write_label_map(array, affine, out / f"{name}.nii.gz", names)
        if split_masks:
            for value in values:
                write_label_map(
                    array == value, affine, out / name / f"{names[value]}.nii.gz", ("background", names[value])
                )
        if preview:
            _preview(hu, labels, out / f"{name}.png", names, title=name)
        statistics += [{"image": str(path), **row} for row in class_statistics(labels, hu, names, values)]
        report.segmented.append(str(path))
    if statistics:
        frame = pd.DataFrame(statistics)
        write_atomically(out / "statistics.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return report


def _preview(hu: MetaTensor, labels: MetaTensor, path: Path, class_names: Sequence[str], title: str) -> None:
    """Three orthogonal slices through the labelled region's centre, labels coloured over the CT, classes named in
    a legend."""
    from monai.transforms import Orientation

    from ctfm.plotting import segmentation_preview
    from ctfm.transforms.preprocess import RAS_LABELS

    orient = Orientation(axcodes="SPL", labels=RAS_LABELS)
    oriented = cast(MetaTensor, orient(hu))
    volume, overlay = oriented[0].numpy(), orient(labels.float())[0].numpy().astype(np.int64)
    spacing = tuple(float(s) for s in oriented.pixdim)
    segmentation_preview(volume, overlay, path, class_names=class_names, spacing=spacing, title=title)
