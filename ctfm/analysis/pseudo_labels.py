"""Pseudo-labels from similarity maps: smooth, threshold, keep the largest component, write, evaluate.

The post-processing of the probability maps of J. Kim's proposal "Leveraging Foundation Models, Knowledge
Distillation, and Pseudo-Labeling for Robust Lung Segmentation in Computed Tomography Scans" (UCLA), on 3D maps.

Post-processing of the normalised maps on the target's grid: a Gaussian (sigma in mm, so anisotropic voxels are
smoothed alike in space), then per class channel a threshold: ``global`` (one value), ``otsu`` (Otsu's threshold of
the channel, skimage) or ``multi-level`` (two levels from multi-Otsu, or given: voxels above the upper level and
those above the lower one connected to them, i.e. hysteresis). A voxel takes the class of its highest channel (its
nearest prototype) when that channel passes its threshold, else the background; optionally each class keeps its
largest connected component (MONAI). The label map is on the target's grid (shape and affine).

:func:`pseudo_label` runs it over many targets (``<name>``: :func:`ctfm.io.naming.output_names`, unique per run):
``<out>/<name>.nii.gz`` (labels, with ``<name>.json`` naming them as
``ctfm segment`` does), ``<name>_probabilities.nii.gz`` (the normalised maps, one volume per class, background
first), ``<name>.png`` (overlay), ``evaluation.csv`` (Dice and average surface distance in mm per class against
reference label maps, classes matched by name to the reference's values), and the pseudo-labelled scans in the
TotalSegmentator v2 layout for ``totalsegmentator.yaml``. With ``output_type="dicom-seg"`` (DICOM series targets
only), ``<name>.seg.dcm``, a DICOM Segmentation object of the series (segments named after the prototypes' classes,
algorithm type SEMIAUTOMATIC), replaces ``<name>.nii.gz`` and its ``.json``.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal, cast

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter
from torch import nn
from tqdm.auto import tqdm

from ctfm.analysis.prototypes import Prototypes
from ctfm.analysis.similarity_maps import Normalisation, SimilarityMaps, prototype_cache, similarity_maps
from ctfm.analysis.tiles import Aggregation
from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError, InvalidScanError
from ctfm.io.dicom_seg import OutputType, check_output_type, require_dicom_series, write_dicom_seg
from ctfm.io.label_maps import write_label_map
from ctfm.io.naming import output_names
from ctfm.outputs import output_folder, refuse_overwrite
from ctfm.reports import ReportRow, RunReport

logger = logging.getLogger(__name__)
Threshold = Literal["global", "otsu", "multi-level"]
THRESHOLDS = ("global", "otsu", "multi-level")


@dataclass(frozen=True)
class PostProcessing:
    """How maps become labels (see the module docstring).

    Attributes:
        sigma_mm: sigma of the Gaussian smoothing in mm (0 for none).
        threshold: ``"global"``, ``"otsu"`` or ``"multi-level"`` (hysteresis).
        level: the threshold of ``global``, on the normalised [0, 1] maps.
        levels: the (lower, upper) pair of ``multi-level``; default multi-Otsu of each channel.
        largest_component: keep each class's largest connected component only.
    """

    sigma_mm: float = 2.0
    threshold: Threshold = "otsu"
    level: float = 0.5
    levels: tuple[float, float] | None = None
    largest_component: bool = True

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLDS:
            raise CTFMError(f"threshold must be one of {THRESHOLDS}, got {self.threshold!r}")
        if self.levels is not None and not self.levels[0] <= self.levels[1]:
            raise CTFMError(f"multi-level thresholds must be (lower, upper), got {self.levels}")


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Millimetres per voxel along each array axis of a voxel -> world affine."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def smooth(maps: np.ndarray, affine: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Each channel of ``(C, I, J, K)`` blurred by a Gaussian of ``sigma_mm`` in world units."""
    if sigma_mm <= 0:
        return maps
    sigma = sigma_mm / voxel_spacing(affine)
    return np.stack([gaussian_filter(channel, sigma, mode="nearest") for channel in maps])


def channel_mask(channel: np.ndarray, settings: PostProcessing) -> np.ndarray:
    """Voxels of one normalised class channel that pass the threshold."""
    from skimage.filters import apply_hysteresis_threshold, threshold_multiotsu, threshold_otsu

    if settings.threshold == "global":
        return channel >= settings.level
    if float(channel.max()) <= float(channel.min()):
        return np.zeros(channel.shape, dtype=bool)  # a constant channel has no foreground to find
    if settings.threshold == "otsu":
        return channel >= threshold_otsu(channel)
    low, high = settings.levels if settings.levels is not None else threshold_multiotsu(channel, classes=3)
    return apply_hysteresis_threshold(channel, low, high)


def labels_from_maps(maps: np.ndarray, affine: np.ndarray, settings: PostProcessing = PostProcessing()) -> np.ndarray:
    """An integer label map (the grid of ``maps``, background 0) from normalised maps, background channel first."""
    import torch
    from monai.transforms import KeepLargestConnectedComponent

    smoothed = smooth(np.asarray(maps, dtype=np.float32), affine, settings.sigma_mm)
    nearest = smoothed.argmax(axis=0)
    labels = np.zeros(nearest.shape, dtype=np.int64)
    for value, channel in enumerate(smoothed[1:], start=1):
        labels[(nearest == value) & channel_mask(channel, settings)] = value
    present = [int(v) for v in np.unique(labels) if v != 0]
    if settings.largest_component and present:
        keep = KeepLargestConnectedComponent(applied_labels=present, independent=True)
        labels = np.asarray(keep(torch.from_numpy(labels)[None]))[0]
    return labels


def evaluate(
    labels: np.ndarray,
    reference: np.ndarray,
    affine: np.ndarray,
    class_names: Sequence[str],
    reference_values: Mapping[str, int] | None = None,
) -> list[dict]:
    """Rows ``class, reference_value, dice, asd_mm, reference_voxels, predicted_voxels`` of two label maps on one
    grid, compared class by class by name: pseudo-label ``i`` is ``class_names[i]``, which is reference value
    ``reference_values[name]`` (default ``i``); only the classes ``reference_values`` names are scored. ASD is
    MONAI's symmetric average surface distance at the grid's spacing (NaN if either mask is empty)."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_dice

    spacing = voxel_spacing(affine).tolist()
    if reference_values is None:
        reference_values = {name: value for value, name in enumerate(class_names) if value}
    rows = []
    for value, name in enumerate(class_names):
        if not value or name not in reference_values:
            continue
        pred = torch.from_numpy(np.asarray(labels) == value)[None, None].float()
        ref = torch.from_numpy(np.asarray(reference) == reference_values[name])[None, None].float()
        both = (pred.sum() > 0) and (ref.sum() > 0)
        dice = float(compute_dice(pred, ref, ignore_empty=False)[0, 0]) if ref.sum() or pred.sum() else 1.0
        asd = float("nan")
        if both:
            with warnings.catch_warnings():  # MONAI 1.5-1.6 warn about an argument of their own internal call
                warnings.filterwarnings("ignore", "monai.metrics.utils get_mask_edges", FutureWarning)
                distance = compute_average_surface_distance(
                    pred, ref, include_background=True, symmetric=True, spacing=spacing
                )  # one channel: the class itself
            asd = float(distance[0, 0])
        rows.append({"class": name, "reference_value": int(reference_values[name]), "dice": dice, "asd_mm": asd,
                     "reference_voxels": int(ref.sum()), "predicted_voxels": int(pred.sum())})  # fmt: skip
    return rows


def scored_classes(prototypes: Prototypes, given: Mapping[int, str] | None = None) -> dict[str, int]:
    """``{class name: reference label value}`` the pseudo-labels are scored with: ``given`` (``{value: name}``,
    names of the prototypes' classes), else the values the prototypes were built from."""
    names = prototypes.class_names[1:]
    if given:
        unknown = [name for name in given.values() if name not in names]
        if unknown:
            raise CTFMError(f"reference classes {unknown} are not classes of the prototypes {list(names)}")
        if len(set(given.values())) != len(given):
            raise CTFMError(f"reference classes name a class twice: {dict(given)}")
        return {name: int(value) for value, name in given.items()}
    recorded = prototypes.reference_values()
    if recorded is None:
        raise CTFMError(
            "the prototypes record no label values (they were not built from label maps): give the reference "
            "maps' values with --reference-classes VALUE=NAME ..."
        )
    return recorded


def check_reference_values(path: str | Path, present: np.ndarray, classes: Mapping[str, int]) -> None:
    """Refuse a reference label map none of whose non-zero values is one of the scored classes' values."""
    found = sorted(int(v) for v in present if v != 0)
    if not set(found) & set(classes.values()):
        wanted = " ".join(f"{value}={name}" for name, value in classes.items())
        raise CTFMError(
            f"{path}: reference values {found[:20]}{' ...' if len(found) > 20 else ''} match none of the classes "
            f"({wanted}); give the reference maps' values with --reference-classes VALUE=NAME ..."
        )


def add_totalsegmentator_subject(
    folder: str | Path, image_id: str, ct: str | Path, labels: np.ndarray, affine: np.ndarray,
    class_names: Sequence[str], split: str = "train",
) -> None:  # fmt: skip
    """Write one subject (``<id>/ct.nii.gz``, ``<id>/segmentations/<class>.nii.gz``) into a TotalSegmentator v2
    folder and add (or replace) its row of ``meta.csv``: the folder ``totalsegmentator.yaml`` trains on."""
    from ctfm.data.datalist import SPLITS
    from ctfm.data.totalsegmentator import META_NAME

    if split not in SPLITS:
        raise CTFMError(f"split must be one of {SPLITS}, got {split!r}")
    check_totalsegmentator_names(class_names)
    folder = Path(folder)
    subject = folder / image_id
    _write_ct_nifti(ct, subject / "ct.nii.gz")
    import nibabel as nib

    for value, name in enumerate(class_names[1:], start=1):
        mask = nib.Nifti1Image((np.asarray(labels) == value).astype(np.uint8), np.asarray(affine, dtype=np.float64))
        write_atomically(subject / "segmentations" / f"{name}.nii.gz", partial(nib.save, mask))
    meta = folder / META_NAME
    rows = pd.read_csv(meta, sep=";", dtype=str) if meta.is_file() else pd.DataFrame(columns=["image_id", "split"])
    rows = pd.concat([rows[rows["image_id"] != image_id], pd.DataFrame([{"image_id": image_id, "split": split}])])
    write_atomically(meta, lambda tmp: rows.to_csv(tmp, sep=";", index=False))


def check_totalsegmentator_names(class_names: Sequence[str]) -> None:
    """Refuse class names ``totalsegmentator.yaml`` could not select (its classes are TotalSegmentator's)."""
    from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES

    unknown = [name for name in class_names[1:] if name not in TOTALSEGMENTATOR_CLASSES]
    if unknown:
        raise CTFMError(
            f"classes {unknown} are not TotalSegmentator classes, so totalsegmentator.yaml cannot train on them; "
            "name the prototypes' classes after TotalSegmentator's (liver, heart, spleen, ...)"
        )


def _write_ct_nifti(ct: str | Path, target: Path) -> None:
    """The scan as ``ct.nii.gz``: a copy of a NIfTI file, other formats converted with their geometry."""
    ct = Path(ct)
    if ct.name.endswith(".nii.gz"):
        write_atomically(target, lambda tmp: shutil.copyfile(ct, tmp))
        return
    import SimpleITK as sitk

    from ctfm.io.reader import read_image

    image = read_image(ct)
    write_atomically(target, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


@dataclass
class PseudoLabelReport(RunReport):
    """Targets labelled and targets skipped with the reason."""

    STATUSES = {"labelled": "labelled", "skipped": "skipped"}
    PROBLEMS = frozenset({"skipped"})
    ITEM_COLUMN = "image"

    out: Path
    labelled: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    evaluation: pd.DataFrame | None = None

    def rows(self) -> list[ReportRow]:
        return [
            *(ReportRow(path, "labelled") for path in self.labelled),
            *(ReportRow(path, "skipped", reason) for path, reason in self.skipped),
        ]

    def headline(self) -> str:
        return super().headline() + f"; outputs in {self.out}"


def pseudo_label(
    targets: Sequence[str | Path],
    prototypes: Prototypes,
    model: nn.Module,
    out: str | Path,
    *,
    aggregation: Aggregation = "mean",
    normalisation: Normalisation = "minmax",
    temperature: float = 0.01,
    post: PostProcessing = PostProcessing(),
    reference_dir: str | Path | None = None,
    reference_classes: Mapping[int, str] | None = None,
    totalsegmentator_layout: str | Path | None = None,
    preview: bool = True,
    prototypes_path: str | Path = "prototypes",
    overwrite: bool = False,
    output_type: OutputType = "nifti",
    model_name: str = "ct-fm",
) -> PseudoLabelReport:
    """Label each target into ``out`` (see the module docstring); a bad target is skipped and reported.

    With ``reference_dir``, the label map named like each target (``<name>.nii.gz``, on its grid) is scored into
    ``out/evaluation.csv`` class by class by name: a class's reference voxels are those of the value
    ``reference_classes`` (``{value: name}``) gives it, else of the value the prototypes were built from. A
    reference with none of those values is refused before any work; a target without a usable reference is
    labelled and its rows say ``unscored`` with the reason. With ``totalsegmentator_layout``, each labelled target
    becomes a training subject of that folder. ``model_name`` names the algorithm in a DICOM SEG. A run that would
    overwrite a file of ``out`` stops first, unless ``overwrite``.

    Args:
        targets: the scans to label (paths or DICOM series folders).
        prototypes: the class prototypes (:func:`~ctfm.analysis.prototypes.compute_prototypes`).
        model: the encoder the prototypes were made with (checked by weight fingerprint).
        out: the output folder.
        aggregation: how overlapping tiles combine per voxel: ``"mean"`` or ``"max"``.
        normalisation: ``"minmax"``, ``"sigmoid"`` or ``"softmax"`` (see
            :func:`~ctfm.analysis.similarity_maps.normalise`).
        temperature: the temperature of ``sigmoid`` and ``softmax``.
        post: smoothing, thresholds and components (:class:`PostProcessing`).
        reference_dir: a folder of reference label maps named like the targets, to score against.
        reference_classes: ``{value: name}`` of the reference maps, when their values differ from the
            prototypes'.
        totalsegmentator_layout: a folder to which each labelled target is added as a TotalSegmentator subject.
        preview: write a PNG overlay per target.
        prototypes_path: the prototypes' file, named in messages.
        overwrite: replace existing outputs.
        output_type: ``"nifti"`` or ``"dicom-seg"`` (DICOM series targets only).
        model_name: the algorithm's name in a DICOM SEG.

    Returns:
        The report: targets labelled, targets skipped with the reason, and the ``evaluation`` table when scored.
    """
    check_output_type(output_type)
    cache = prototype_cache(model, prototypes, where=prototypes_path)  # refuses another model before any work
    names = prototypes.class_names
    if totalsegmentator_layout is not None:
        check_totalsegmentator_names(names)
    targets = list(targets)
    target_names = output_names(targets)
    classes = scored_classes(prototypes, reference_classes) if reference_dir is not None else {}
    unusable = _check_references(reference_dir, target_names, classes) if reference_dir is not None else {}
    out = output_folder(out)  # created only once the references are known to fit
    planned = [out / "evaluation.csv"] if reference_dir is not None else []
    for name in target_names:
        labelled = [f"{name}.seg.dcm"] if output_type == "dicom-seg" else [f"{name}.nii.gz", f"{name}.json"]
        planned += [out / file for file in [*labelled, f"{name}_probabilities.nii.gz"]]
        planned += [out / f"{name}.png"] if preview else []
        planned += [Path(totalsegmentator_layout) / name] if totalsegmentator_layout is not None else []
    refuse_overwrite(planned, overwrite)
    report = PseudoLabelReport(out=out)
    scores: list[dict] = []
    for target, name in zip(tqdm(targets, desc="pseudo-labelling", unit="scan"), target_names):
        try:
            if output_type == "dicom-seg":
                require_dicom_series(target)
            maps = similarity_maps(model, target, prototypes, aggregation=aggregation, normalisation=normalisation,
                                   temperature=temperature, cache=cache)  # fmt: skip
        except InvalidScanError as err:
            logger.warning("skipping %s", err)
            report.skipped.append((str(target), err.problem))
            continue
        affine = np.asarray(maps.scan.affine, dtype=np.float64)
        labels = labels_from_maps(maps.maps, affine, post)
        if output_type == "dicom-seg":
            settings = {"prototypes": Path(prototypes_path).name, "model_sha256": str(cache.settings["model"])}
            try:
                write_dicom_seg(labels, target, names, out / f"{name}.seg.dcm", affine=affine, parameters=settings,
                                algorithm_name=model_name, algorithm_type="SEMIAUTOMATIC")  # fmt: skip
            except InvalidScanError as err:
                logger.warning("skipping %s", err)
                report.skipped.append((str(target), err.problem))
                continue
        else:
            write_label_map(labels, affine, out / f"{name}.nii.gz", names)
        _write_maps(maps, affine, out / f"{name}_probabilities.nii.gz")
        if preview:
            _overlay(maps, labels, out / f"{name}.png", title=name)
        if reference_dir is not None:
            scores += _score(target, name, labels, affine, names, reference_dir, classes, unusable.get(name), maps)
        if totalsegmentator_layout is not None:
            add_totalsegmentator_subject(totalsegmentator_layout, name, target, labels, affine, names)
        cache.memory.clear()  # one target's tiles at a time
        report.labelled.append(str(target))
    if scores:
        report.evaluation = pd.DataFrame(scores, columns=EVALUATION_COLUMNS)
        frame = report.evaluation
        write_atomically(out / "evaluation.csv", lambda tmp: frame.to_csv(tmp, index=False))
    return report


#: Columns of ``evaluation.csv``: one row per target and scored class; ``status`` is ``scored`` or ``unscored``
#: (no usable reference; ``note`` says why, and the metrics are empty).
EVALUATION_COLUMNS = ["image", "class", "status", "reference_value", "dice", "asd_mm", "reference_voxels",
                      "predicted_voxels", "note"]  # fmt: skip


def _reference_path(folder: str | Path, name: str) -> Path:
    """The reference of the target whose outputs are named ``name`` (:func:`ctfm.io.naming.output_names`)."""
    return Path(folder) / f"{name}.nii.gz"


def _check_references(folder: str | Path, names: Sequence[str], classes: Mapping[str, int]) -> dict[str, str]:
    """Refuse (before any embedding) a reference map whose values match none of ``classes``; return, by output
    name, the reason each target without a readable reference goes unscored."""
    from ctfm.io.reader import read_label_map

    unusable = {}
    for name in names:
        path = _reference_path(folder, name)
        if not path.is_file():
            unusable[name] = f"no reference label map {path}"
            continue
        try:
            present = np.unique(np.asarray(read_label_map(path)[0]))
        except InvalidScanError as err:
            unusable[name] = f"{path}: {err.problem}"
            continue
        check_reference_values(path, present, classes)
    return unusable


def _score(
    target: str | Path, name: str, labels: np.ndarray, affine: np.ndarray, names: Sequence[str], folder: str | Path,
    classes: Mapping[str, int], reason: str | None, maps: SimilarityMaps,
) -> list[dict]:  # fmt: skip
    """``evaluation.csv`` rows of one target: scored against its reference, or ``unscored`` with the reason."""
    from ctfm.io.reader import read_label_map

    if reason is None:
        try:
            reference = np.asarray(read_label_map(_reference_path(folder, name), like=maps.scan)[0]).astype(np.int64)
        except InvalidScanError as err:
            reason = f"{err.path}: {err.problem}"
    if reason is not None:
        logger.warning("%s: labelled but unscored (%s)", target, reason)
        return [{"image": str(target), "class": name, "status": "unscored", "reference_value": value,
                 "predicted_voxels": int((labels == names.index(name)).sum()), "note": reason}
                for name, value in classes.items()]  # fmt: skip
    rows = evaluate(labels, reference, affine, names, classes)
    return [{"image": str(target), "status": "scored", **row, "note": ""} for row in rows]


def _write_maps(maps: SimilarityMaps, affine: np.ndarray, path: Path) -> None:
    """``(I, J, K, C)`` float32 NIfTI: one volume per class, background first, on the target's grid."""
    import nibabel as nib

    image = nib.Nifti1Image(np.moveaxis(maps.maps, 0, -1).astype(np.float32), affine)
    image.header.set_intent("vector", name="ctfm class maps")
    image.header.set_xyzt_units("mm")
    write_atomically(path, lambda tmp: nib.save(image, str(tmp)))


def _overlay(maps: SimilarityMaps, labels: np.ndarray, path: Path, title: str) -> None:
    """Labels over the scan and the strongest class map, in the orientation pictures use (SPL)."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation

    from ctfm.plotting import pseudo_label_overlay
    from ctfm.transforms.preprocess import RAS_LABELS

    orient = Orientation(axcodes="SPL", labels=RAS_LABELS)
    affine = maps.scan.affine
    scan = cast(MetaTensor, orient(maps.scan))
    label_volume = orient(MetaTensor(labels[None].astype(np.float32), affine=affine))[0].numpy().astype(np.int64)
    best = orient(MetaTensor(maps.maps[1:].max(axis=0)[None], affine=affine))[0].numpy()
    spacing = tuple(float(s) for s in scan.pixdim)
    pseudo_label_overlay(scan[0].numpy(), label_volume, best, path, class_names=maps.class_names, spacing=spacing,
                         title=title)  # fmt: skip
