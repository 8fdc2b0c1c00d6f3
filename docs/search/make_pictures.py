"""Make the pictures of docs/readme/search.md: every `ctfm` search and analysis command on synthetic sample scans.

    PYTHONPATH=. python docs/search/make_pictures.py [--encoder DIR] [--pretrain-epochs 10] [--random]

The encoder is the quickstart's (``ctfm quickstart``: the pretraining recipe with quickstart.yaml on 8 synthetic
scans, here with the learning check's 10 epochs of 8 patches per scan, the setting that measurably learned), trained
first unless ``--encoder`` names an exported one; ``--random`` uses a randomly initialised encoder of the same size
instead, to see what pretraining changed. The scans are synthetic sample torsos, not real CT.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from ctfm.cli import main as ctfm
from ctfm.data.sample import LABEL, generate_ct, write_labels_nifti, write_nifti
from ctfm.hub import save_pretrained
from ctfm.nn import ct_fm_encoder

HERE = Path(__file__).parent
SHAPE, SPACING = (40, 128, 128), (2.5, 1.0, 1.0)
PATCH = ["16", "48", "48"]


def run(*args: str) -> None:
    print("ctfm " + " ".join(args))
    assert ctfm(list(args)) == 0


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
        model = args.encoder or str(quickstart_encoder(work / "quickstart", args.pretrain_epochs))
    samples = [generate_ct(SHAPE, SPACING, seed=s) for s in range(6)]
    scans = [str(write_nifti(s, work / f"scan{i}.nii.gz")) for i, s in enumerate(samples)]
    (work / "masks").mkdir()
    for i, s in enumerate(samples):
        heart = dataclasses.replace(s, labels=(s.labels == LABEL["heart"]).astype(np.uint8))
        write_labels_nifti(heart, work / "masks" / f"scan{i}.nii.gz")
    heart_voxel = np.argwhere(samples[0].labels == LABEL["heart"]).mean(axis=0)
    point = nib.affines.apply_affine(samples[0].affine, heart_voxel)

    out = work / "search"
    run("semantic-search", scans[0], "--point", *[f"{p:.1f}" for p in point], scans[1], scans[2], "--model", model,
        "--out", str(out), "--mask-dir", str(work / "masks"), "--patch-size", *PATCH)  # fmt: skip
    shutil.copy(out / "scan1_heatmap.png", HERE / "semantic_search.png")
    print(pd.read_csv(out / "matches.csv").to_string(index=False))

    run("analyse", "saliency", scans[0], "--point", *[f"{p:.1f}" for p in point], "--model", model,
        "--out", str(work / "saliency"), "--patch-size", *PATCH)  # fmt: skip
    shutil.copy(work / "saliency" / "saliency.png", HERE / "saliency.png")
    run("analyse", "pca", scans[0], scans[1], "--model", model, "--out", str(work / "pca"), "--patch-size", *PATCH)
    shutil.copy(work / "pca" / "pca_concepts.png", HERE / "pca_concepts.png")

    table = work / "embeddings.parquet"
    run("embed", *scans, "--model", model, "--out", str(table), "--patch-size", *PATCH)
    labels = work / "labels.csv"
    pd.DataFrame({"path": scans, "label": [f"seed {i % 2}" for i in range(6)]}).to_csv(labels, index=False)
    run("analyse", "tsne", "--table", str(table), "--labels", str(labels), "--out", str(work / "tsne"))
    shutil.copy(work / "tsne" / "tsne.png", HERE / "tsne.png")

    # A second scan of the same subject: a crop of the first, moved 10 mm to the left, with 20 HU of noise.
    image = nib.load(scans[0])
    data = np.asarray(image.dataobj, dtype=np.float32)[4:, 6:, 2:]
    data += np.random.default_rng(0).normal(0, 20, data.shape)
    affine = image.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ np.array([4, 6, 2]) + np.array([10.0, 0.0, 0.0])
    retest = work / "retest.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), affine), retest)
    run("analyse", "stability", scans[0], str(retest), "--shift", "10", "0", "0", "--model", model,
        "--out", str(work / "stability"), "--patch-size", *PATCH)  # fmt: skip
    shutil.copy(work / "stability" / "stability.png", HERE / "stability.png")

    arrays = {}
    for split, chosen in (("train", samples[:4]), ("val", samples[4:5]), ("test", samples[5:])):
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = organ_crops(chosen)
    np.savez(work / "organs.npz", **arrays)
    run("retrieval-eval", str(work / "organs.npz"), "--model", model, "--out", str(work / "retrieval"))
    shutil.copy(work / "retrieval" / "neighbours.png", HERE / "retrieval.png")
    print(pd.read_csv(work / "retrieval" / "metrics.csv").to_string(index=False))


if __name__ == "__main__":
    main()
