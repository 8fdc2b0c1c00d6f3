"""Make the docs' pictures: every `ctfm` search and analysis command, on 3D Slicer's chest CT where one scan will do.

    PYTHONPATH=. python docs/search/make_pictures.py [--encoder DIR] [--pretrain-epochs 10] [--random]

Writes docs/search/{semantic_search,saliency,pca_concepts,stability,tsne,retrieval}.png and
docs/labels/pseudo_labels.png, and prints each command as run (from the work folder, so the file names in the
printed commands are the ones the docs' captions quote).

The real CT is 3D Slicer's CTChest sample as the ``slicerio`` wheel ships it (``slicerio/data/CTChest4.nrrd``:
128 x 128 x 34 voxels of 3.05 x 3.05 x 10 mm, LPS header, neck to upper abdomen) with its segmentation
(``Segmentation.seg.nrrd`` on the same grid: 5 right lung, 6 left lung, 3 thoracic vertebral column, ...).
``chest.nii.gz`` is a 120 mm slab of it through both lungs (the commands resample it to 3 x 1 x 1 mm, about
40 x 300 x 370 voxels, so each runs in minutes on two CPU cores); ``chest_retest.nii.gz`` is a second scan made
from it: its field of view starts a few voxels further in, the anatomy sits 10 mm further to the patient's right
(RAS x) and 20 HU of Gaussian noise is added. It stands in for a second real scan, since no other labelled CT
volume installs offline. t-SNE and retrieval need many scans, so they stay on synthetic sample scans
(``ctfm.data.sample.generate_ct``).

The encoder is the quickstart's (``ctfm quickstart``: the pretraining recipe with quickstart.yaml on 8 synthetic
scans, here with the learning check's 10 epochs of 8 patches per scan), trained first unless ``--encoder`` names an
exported one; ``--random`` uses a randomly initialised encoder of the same size instead.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from ctfm.cli import main as ctfm
from ctfm.data.sample import LABEL, generate_ct, write_nifti
from ctfm.hub import save_pretrained
from ctfm.io.reader import read_ct, read_label_map
from ctfm.nn import ct_fm_encoder

DOCS = Path(__file__).resolve().parents[1]
SHAPE, SPACING = (40, 128, 128), (2.5, 1.0, 1.0)
PATCH = ["16", "64", "64"]
#: The slab of the chest CT's (i, j, k) grid as read (i towards the patient's right, j anterior, k superior):
#: 12 slices (120 mm, slice centres z -210 to -100 mm RAS) through both lungs, the body in-plane.
SLAB = (slice(2, 126), slice(20, 120), slice(13, 25))
#: The retest's field of view starts this many voxels further in, and its anatomy is moved by SHIFT_MM (RAS).
RETEST_CROP, SHIFT_MM = (2, 3, 1), np.array([10.0, 0.0, 0.0])
RIGHT_LUNG, LEFT_LUNG, THORACIC_SPINE = 5, 6, 3


def run(*args: str) -> None:
    print("ctfm " + " ".join(args), flush=True)
    assert ctfm(list(args)) == 0


def save(array: np.ndarray, affine: np.ndarray, path: str, dtype: type) -> str:
    nib.save(nib.Nifti1Image(array.astype(dtype), affine), path)
    return path


def chest_scans() -> np.ndarray:
    """``chest.nii.gz``, ``chest_retest.nii.gz``, their label maps (``labels/``), right-lung masks (``right_lung/``);
    returns the query point (RAS mm): the voxel of the right lung nearest its centroid in the slab."""
    data = importlib.resources.files("slicerio") / "data"
    scan = read_ct(str(data / "CTChest4.nrrd"))
    labels = np.asarray(read_label_map(str(data / "Segmentation.seg.nrrd"), like=scan)[0]).astype(np.uint8)
    hu = np.asarray(scan[0])[SLAB]
    labels = labels[SLAB]
    affine = np.asarray(scan.affine, dtype=np.float64).copy()
    affine[:3, 3] += affine[:3, :3] @ [s.start for s in SLAB]
    rng = np.random.default_rng(0)
    crop = tuple(slice(c, None) for c in RETEST_CROP)
    retest_hu = hu[crop] + rng.normal(0, 20, hu[crop].shape)
    retest_affine = affine.copy()
    retest_affine[:3, 3] += affine[:3, :3] @ RETEST_CROP + SHIFT_MM
    for folder in ("labels", "right_lung"):
        Path(folder).mkdir()
    for name, image, label_map, grid in (("chest", hu, labels, affine),
                                         ("chest_retest", retest_hu, labels[crop], retest_affine)):  # fmt: skip
        save(image, grid, f"{name}.nii.gz", np.int16)
        save(label_map, grid, f"labels/{name}.nii.gz", np.uint8)
        save(label_map == RIGHT_LUNG, grid, f"right_lung/{name}.nii.gz", np.uint8)
    lung = np.argwhere(labels == RIGHT_LUNG)
    voxel = lung[np.argmin(np.linalg.norm(lung - lung.mean(axis=0), axis=1))]
    point = nib.affines.apply_affine(affine, voxel)
    assert labels[tuple(voxel)] == RIGHT_LUNG
    print(f"chest.nii.gz: {hu.shape} voxels of {np.diag(affine)[:3].round(2).tolist()} mm; query at right-lung voxel "
          f"{voxel.tolist()} = {point.round(1).tolist()} mm RAS")  # fmt: skip
    return point


def organ_crops(samples, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """OrganMNIST3D-like uint8 cubes centred on organs of the sample scans, with the organ as label."""
    images, labels = [], []
    for sample in samples:
        hu = np.clip((sample.hu + 1024.0) / 3072.0, 0, 1)
        padded = np.pad(hu, size)
        for index, organ in enumerate(("heart", "liver", "lung", "spleen", "kidney")):
            centre = np.round(np.argwhere(sample.labels == LABEL[organ]).mean(axis=0)).astype(int) + size // 2
            images.append((255 * padded[tuple(slice(c, c + size) for c in centre)]).astype(np.uint8))
            labels.append(index)
    return np.stack(images), np.array(labels)[:, None]


def quickstart_encoder(work: Path, epochs: int, patches_per_scan: int = 8) -> Path:
    """Pretrain and export the quickstart encoder (``ctfm quickstart`` with more epochs and patches)."""
    from ctfm.quickstart import run_quickstart

    overrides = [f"vars::max_epochs={epochs}", f"vars::patches_per_scan={patches_per_scan}"]
    return run_quickstart(work, overrides=[*overrides, "trainer::enable_progress_bar=false"])


def real_ct_pictures(model: str) -> None:
    """Semantic search, saliency, PCA, stability and pseudo-labels on the chest CT slab and its retest."""
    point = chest_scans()
    where = [f"{p:.1f}" for p in point]
    run("semantic-search", "chest.nii.gz", "--point", *where, "chest.nii.gz", "chest_retest.nii.gz",
        "--model", model, "--out", "search", "--mask-dir", "right_lung", "--patch-size", *PATCH)  # fmt: skip
    shutil.copy("search/chest_retest_heatmap.png", DOCS / "search" / "semantic_search.png")
    print(pd.read_csv("search/matches.csv").to_string(index=False))

    run("analyse", "saliency", "chest.nii.gz", "--point", *where, "--model", model, "--out", "saliency",
        "--patch-size", *PATCH)  # fmt: skip
    shutil.copy("saliency/saliency.png", DOCS / "search" / "saliency.png")
    run("analyse", "pca", "chest.nii.gz", "chest_retest.nii.gz", "--overlap", "0.5", "--model", model,
        "--out", "pca", "--patch-size", *PATCH)  # fmt: skip
    shutil.copy("pca/pca_concepts.png", DOCS / "search" / "pca_concepts.png")
    run("analyse", "stability", "chest.nii.gz", "chest_retest.nii.gz", "--shift", *[f"{s:g}" for s in SHIFT_MM],
        "--model", model, "--out", "stability", "--patch-size", *PATCH)  # fmt: skip
    shutil.copy("stability/stability.png", DOCS / "search" / "stability.png")
    print(pd.read_csv("stability/stability.csv").to_string(index=False))

    classes = [f"{RIGHT_LUNG}=right_lung", f"{LEFT_LUNG}=left_lung", f"{THORACIC_SPINE}=thoracic_spine"]
    run("prototypes", "--images", "chest.nii.gz", "--labels", "labels/chest.nii.gz", "--classes", *classes,
        "--model", model, "--out", "prototypes.pt")  # fmt: skip
    run("pseudo-label", "chest_retest.nii.gz", "--prototypes", "prototypes.pt", "--model", model, "--out", "pseudo",
        "--all-components", "--reference-dir", "labels")  # fmt: skip
    shutil.copy("pseudo/chest_retest.png", DOCS / "labels" / "pseudo_labels.png")
    print(pd.read_csv("pseudo/evaluation.csv").to_string(index=False))


def synthetic_pictures(model: str) -> None:
    """t-SNE of six sample scans and retrieval of organ cubes cut from them: these need many scans."""
    samples = [generate_ct(SHAPE, SPACING, seed=s) for s in range(6)]
    scans = [str(write_nifti(s, Path(f"sample{i}.nii.gz"))) for i, s in enumerate(samples)]
    run("embed", *scans, "--model", model, "--out", "embeddings.parquet", "--patch-size", *PATCH)
    labels = pd.DataFrame({"path": scans, "label": [f"seed {i % 2}" for i in range(6)]})
    labels.to_csv("sample_labels.csv", index=False)
    run("analyse", "tsne", "--table", "embeddings.parquet", "--labels", "sample_labels.csv", "--out", "tsne")
    shutil.copy("tsne/tsne.png", DOCS / "search" / "tsne.png")

    arrays = {}
    for split, chosen in (("train", samples[:4]), ("val", samples[4:5]), ("test", samples[5:])):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = organ_crops(chosen)
    np.savez("organs.npz", **arrays)
    run("retrieval-eval", "organs.npz", "--model", model, "--out", "retrieval")
    shutil.copy("retrieval/neighbours.png", DOCS / "search" / "retrieval.png")
    print(pd.read_csv("retrieval/metrics.csv").to_string(index=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", help="an exported encoder folder (default: pretrain the quickstart one)")
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--random", action="store_true", help="a random init_filters-8 encoder instead")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    torch.manual_seed(0)
    if args.random:
        model = str(save_pretrained(ct_fm_encoder(init_filters=8), work / "encoder"))
    else:
        model = str(Path(args.encoder).resolve()) if args.encoder else None
        model = model or str(quickstart_encoder(work / "quickstart", args.pretrain_epochs))
    print(f"work folder {work}; model {model}")
    os.chdir(work)
    real_ct_pictures(model)
    synthetic_pictures(model)


if __name__ == "__main__":
    main()
