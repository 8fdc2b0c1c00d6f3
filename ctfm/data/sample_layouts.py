"""Synthetic scans written in the public datasets' own layouts (TotalSegmentator v2, Medical Segmentation Decathlon).

The readers are tested, and the learning check runs, on folders a user could not tell from the real ones except by
their size: the sample generator's tissue labels become TotalSegmentator classes (kidneys split left and right by
the patient's side) or an MSD "tumour".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ctfm.data.sample import LABEL, _to_image, generate_ct, write_nifti

#: TotalSegmentator class -> the sample's tissue label it is painted from (kidneys: split by side below).
TISSUE_OF_CLASS = {
    "spleen": LABEL["spleen"],
    "kidney_right": LABEL["kidney"],
    "kidney_left": LABEL["kidney"],
    "liver": LABEL["liver"],
    "heart": LABEL["heart"],
    "spinal_cord": LABEL["spinal_cord"],
}


def class_mask(labels: np.ndarray, name: str) -> np.ndarray:
    """Binary ``(z, y, x)`` mask of TotalSegmentator class ``name`` in a sample's SPL label array."""
    mask = labels == TISSUE_OF_CLASS[name]
    if name.startswith("kidney_"):
        left = np.arange(labels.shape[2]) >= labels.shape[2] // 2  # x grows towards the patient's left
        mask &= left if name.endswith("left") else ~left
    return mask


def _write_mask(sample, mask: np.ndarray, path: Path) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(_to_image(sample, mask.astype(np.uint8)), str(path), useCompression=True)
    return path


def make_totalsegmentator_sample(
    out_dir: str | Path,
    splits: Sequence[str] = ("train", "train", "val", "test"),
    shape: Sequence[int] = (32, 96, 96),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    seed: int = 0,
    classes: Sequence[str] = tuple(TISSUE_OF_CLASS),
) -> Path:
    """One subject per entry of ``splits`` as ``s0000/ct.nii.gz`` + ``segmentations/<class>.nii.gz``; ``meta.csv``."""
    out_dir = Path(out_dir)
    rows = []
    for index, (split, scan_seed) in enumerate(zip(splits, np.random.SeedSequence(seed).generate_state(len(splits)))):
        image_id = f"s{index:04d}"
        sample = generate_ct(shape, spacing, seed=int(scan_seed))
        write_nifti(sample, out_dir / image_id / "ct.nii.gz")
        masks = out_dir / image_id / "segmentations"
        for name in classes:
            _write_mask(sample, class_mask(sample.labels, name), masks / f"{name}.nii.gz")
        rows.append({"image_id": image_id, "age": 60, "gender": "f", "split": split, "study_type": "ct thorax"})
    pd.DataFrame(rows).to_csv(out_dir / "meta.csv", sep=";", index=False)
    return out_dir


def make_msd_sample(
    out_dir: str | Path,
    n_cases: int = 4,
    shape: Sequence[int] = (32, 96, 96),
    spacing: Sequence[float] = (2.5, 1.0, 1.0),
    seed: int = 0,
    task: str = "Task03_Liver",
) -> Path:
    """An MSD-like task folder: the liver as label 1 and a sphere inside it as the ``tumour`` label 2."""
    out_dir = Path(out_dir)
    training = []
    for index, scan_seed in enumerate(np.random.SeedSequence(seed).generate_state(n_cases)):
        case = f"{task.split('_')[-1].lower()}_{index}"
        sample = generate_ct(shape, spacing, seed=int(scan_seed))
        labels = (sample.labels == LABEL["liver"]).astype(np.uint8)
        zz, yy, xx = np.nonzero(labels)
        centre = np.array([zz.mean(), yy.mean(), xx.mean()])
        grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
        radius_mm = 6.0 + index % 3
        inside = (((grid - centre) * np.asarray(spacing)) ** 2).sum(-1) <= radius_mm**2
        labels[inside & (labels == 1)] = 2
        sample.hu[labels == 2] -= 40  # a hypodense lesion
        write_nifti(sample, out_dir / "imagesTr" / f"{case}.nii.gz")
        _write_mask(sample, labels, out_dir / "labelsTr" / f"{case}.nii.gz")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    document = {
        "name": task.split("_")[-1],
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "cancer"},
        "numTraining": n_cases,
        "training": training,
        "test": [],
    }
    (out_dir / "dataset.json").write_text(json.dumps(document, indent=2))
    return out_dir


def make_probe_corpus(
    out_dir: str | Path,
    n_scans: int = 24,
    shape: Sequence[int] = (32, 96, 96),
    spacing: Sequence[float] = (2.5, 1.0, 1.0),
    seed: int = 0,
) -> Path:
    """A corpus for the encoder benchmark with labels the generator knows; returns the path of its ``labels.csv``.

    Each scan gets a TotalSegmentator-style ``segmentations/`` folder (liver, spleen, heart masks). A third of the
    scans have no lesion, a third a hypodense (-60 HU) and a third a hyperdense (+60 HU) sphere in the liver.
    Targets: ``lesion_present`` (0 / 1) and ``lesion_kind`` (none / hypo / hyper); the ROI is the liver. Splits
    are 60 / 20 / 20, balanced over the kinds.
    """
    out_dir = Path(out_dir)
    kinds = ("none", "hypo", "hyper")
    rows = []
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    for index, scan_seed in enumerate(np.random.SeedSequence(seed).generate_state(n_scans)):
        kind = kinds[index % 3]
        sample = generate_ct(shape, spacing, seed=int(scan_seed))
        liver = sample.labels == LABEL["liver"]
        if kind != "none":
            zz, yy, xx = np.nonzero(liver)
            centre = np.array([zz.mean(), yy.mean(), xx.mean()])
            inside = (((grid - centre) * np.asarray(spacing)) ** 2).sum(-1) <= (8.0 + index % 4) ** 2
            sample.hu[inside & liver] += -60 if kind == "hypo" else 60
        name = f"case_{index:03d}"
        write_nifti(sample, out_dir / name / "ct.nii.gz")
        for organ in ("liver", "spleen", "heart"):
            _write_mask(sample, class_mask(sample.labels, organ), out_dir / name / "segmentations" / f"{organ}.nii.gz")
        position = index // 3  # the n-th scan of its kind
        per_kind = -(-n_scans // 3)
        split = "train" if position < 0.6 * per_kind else "val" if position < 0.8 * per_kind else "test"
        rows.append({"image": f"{name}/ct.nii.gz", "mask": f"{name}/segmentations", "labels": "liver",
                     "split": split, "lesion_present": int(kind != "none"), "lesion_kind": kind})  # fmt: skip
    pd.DataFrame(rows).to_csv(out_dir / "labels.csv", index=False)
    return out_dir / "labels.csv"
