"""Regions of a scan from its segmentation: a label map, a folder of per-class masks, or an array on the scan's grid.

Organ-level embedding (the CVPR 2026 CT foundation-model challenge's "ROI" diseases) takes an embedding inside a
mask derived from organ segmentations. This module turns what a user has (a TotalSegmentator output folder of
``<class>.nii.gz`` masks, a label map with a ``.json`` sidecar of names as ``ctfm segment`` writes, a DICOM
Segmentation's decoded array, a MetaTensor) into one label map on the scan's grid and the values that make the
region, so the region then follows the scan through the canonical preprocessing by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from ctfm.errors import CTFMError, InvalidScanError
from ctfm.io.label_maps import LABEL_MAP_SUFFIXES as _MASK_SUFFIXES
from ctfm.io.label_maps import read_label_names
from ctfm.io.reader import check_same_grid, read_label_map


class EmptyRegionError(CTFMError, ValueError):
    """The region chosen from a mask holds no voxel (or, after preprocessing, no patch)."""


def _mask_stem(path: Path) -> str | None:
    return next((path.name[: -len(s)] for s in _MASK_SUFFIXES if path.name.endswith(s)), None)


def read_mask_folder(folder: str | Path, like: MetaTensor) -> tuple[MetaTensor, dict[int, str]]:
    """A TotalSegmentator-style folder of binary ``<class>.nii.gz`` masks as one label map (values 1..K in name
    order) and its names. Masks that overlap keep the later class."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and _mask_stem(p))
    if not files:
        raise InvalidScanError(folder, "holds no mask files (<class>.nii.gz)")
    merged = torch.zeros_like(like.as_tensor() if isinstance(like, MetaTensor) else like, dtype=torch.float32)
    names = {}
    for value, path in enumerate(files, start=1):
        mask = read_label_map(path, like=like)
        merged[mask.as_tensor() > 0] = float(value)
        names[value] = str(_mask_stem(path))
    return MetaTensor(merged, affine=like.affine.clone(), meta={"filename_or_obj": str(folder)}), names


def read_region_labels(mask: str | Path | MetaTensor | np.ndarray | torch.Tensor, like: MetaTensor) -> tuple[
    MetaTensor, dict[int, str]
]:  # fmt: skip
    """Any supported mask as a ``(1, I, J, K)`` label map on ``like``'s grid and the names of its values."""
    if isinstance(mask, (str, Path)):
        path = Path(mask)
        if path.is_dir():
            return read_mask_folder(path, like)
        if not path.exists():
            raise InvalidScanError(path, "no such mask file or folder")
        return read_label_map(path, like=like), read_label_names(path)
    array = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    if array.ndim == 3:
        array = array[None]
    if isinstance(mask, MetaTensor):
        labels = MetaTensor(array.float(), affine=mask.affine, meta=dict(mask.meta))
        check_same_grid(like, labels, mask.meta.get("filename_or_obj", "mask"))
    else:
        if tuple(array.shape[1:]) != tuple(like.shape[1:]):
            raise InvalidScanError(
                "mask", f"has shape {tuple(array.shape[1:])}, the scan {tuple(like.shape[1:])}: not on its grid"
            )
        labels = MetaTensor(array.float(), affine=like.affine.clone())
    return labels, {}


#: The placeholders a ``--masks`` pattern may hold, filled from each scan's path.
MASK_PLACEHOLDERS = ("{stem}", "{parent}", "{dir}")


class MissingMaskError(CTFMError, FileNotFoundError):
    """No mask where ``--masks`` says a scan's mask is."""


def is_mask_pattern(masks: str) -> bool:
    """Whether ``masks`` is a pattern (holds a placeholder) rather than a folder of per-scan masks."""
    return any(p in masks for p in MASK_PLACEHOLDERS)


def mask_for(scan: str | Path, masks: str | Path) -> Path:
    """Where the mask of ``scan`` is, by one of two explicit rules.

    A pattern with placeholders is filled from the scan's path: ``{stem}`` is its name without the extension
    (``ct`` for ``case_001/ct.nii.gz``, a DICOM folder's own name), ``{parent}`` the name of the folder holding it
    (``case_001``) and ``{dir}`` that folder's path; e.g. ``{dir}/segmentations`` (TotalSegmentator beside each
    scan) or ``masks/{parent}.nii.gz``. Otherwise ``masks`` is a folder holding, per scan, a label map
    ``<stem>.nii.gz`` (or ``.nii``, ``.nrrd``, ``.mha``) or a TotalSegmentator folder ``<stem>/``.

    Raises:
        MissingMaskError: nothing there, naming the path looked for.
    """
    from ctfm.io.naming import image_stem

    scan, text = Path(scan), str(masks)
    stem = image_stem(scan)
    if is_mask_pattern(text):
        filled = {"{stem}": stem, "{parent}": scan.parent.name, "{dir}": str(scan.parent)}
        for placeholder, value in filled.items():
            text = text.replace(placeholder, value)
        path = Path(text)
        if not path.exists():
            raise MissingMaskError(f"{scan}: no mask at {path} (--masks {masks})")
        return path
    folder = Path(masks)
    candidates = [folder / stem, *(folder / f"{stem}{suffix}" for suffix in _MASK_SUFFIXES)]
    found = next((c for c in candidates if c.exists()), None)
    if found is None:
        raise MissingMaskError(f"{scan}: no mask {folder / stem}.nii.gz (or a folder {folder / stem}/) in {folder}")
    return found


def region_values(
    present: Sequence[int], names: Mapping[int, str], labels: Sequence[int | str] | None, where: str
) -> list[int]:
    """The label values ``labels`` selects (values or names); every non-zero value when ``labels`` is None."""
    if labels is None:
        return [v for v in present if v != 0]
    by_name = {name: value for value, name in names.items()}
    chosen = []
    for label in labels:
        if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
            if label not in by_name:
                known = ", ".join(sorted(by_name)) or "none: the mask has no names (give values instead)"
                raise CTFMError(f"{where}: no class named {label!r} in the mask; known names: {known}")
            chosen.append(by_name[label])
        else:
            chosen.append(int(label))
    return chosen


def region_mask(labels: torch.Tensor, values: Sequence[int]) -> torch.Tensor:
    """Boolean mask of the voxels whose label is one of ``values``."""
    plain = labels.as_tensor() if isinstance(labels, MetaTensor) else labels
    return torch.isin(plain.round().long(), torch.as_tensor(list(values), dtype=torch.long))
