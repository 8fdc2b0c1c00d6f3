"""Do lesion features from the pretrained encoder tell lesion kinds apart better than a random encoder's?

    python benchmarks/lesion_learning_check.py [--scans 20] [--lesions 6] [--encoder DIR] [--crop ct-fm]

1. Pretrains the quickstart encoder on 8 synthetic scans with the quickstart's settings (4 epochs, 4 patches per
   scan; ``--pretrain-epochs``/``--pretrain-patches`` for more), unless ``--encoder`` gives an exported one; a
   randomly initialised encoder of the same shape is saved beside it.
2. Paints lesions of two kinds into the lungs of held-out synthetic scans (never seen in pretraining): solid
   nodules (0 to +80 HU) and ground-glass ones (-700 to -450 HU), radius 3 to 9 mm, at random lung positions at
   least 20 mm apart, so a crop also holds other lesions of either kind and the size varies more than the kind.
   Each lesion's centre goes into ``lesions.csv`` as an LPS point (``image_path,coordX,coordY,coordZ,kind,split``);
   scans, not lesions, are split into train and test, so no scan lends its anatomy to both.
3. ``ctfm features`` with each encoder, then ``ctfm probe --label kind`` on each table: balanced accuracy (and
   AUROC) on the test scans' lesions with their bootstrap 95% confidence intervals.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

import ctfm
from ctfm.data.sample import LABEL, SampleCT, generate_ct, write_nifti
from ctfm.nn import ct_fm_encoder

SHAPE = (48, 192, 192)
SPACING = (2.5, 1.0, 1.0)
KINDS = {"solid": (0.0, 80.0), "ground_glass": (-700.0, -450.0)}
RADIUS_MM = (3.0, 9.0)
MIN_GAP_MM = 20.0


def paint_lesions(sample: SampleCT, count: int, rng: np.random.Generator) -> list[dict]:
    """Paint ``count`` spherical lesions into the sample's lungs (in place); their kinds and LPS centres."""
    spacing = np.asarray(sample.spacing)
    lung = np.argwhere(sample.labels == LABEL["lung"])
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in sample.shape), indexing="ij"), axis=-1)
    placed: list[np.ndarray] = []
    lesions = []
    while len(lesions) < count:
        centre = lung[rng.integers(len(lung))]
        if any(np.linalg.norm((centre - other) * spacing) < MIN_GAP_MM for other in placed):
            continue
        kind = str(rng.choice(list(KINDS)))
        radius = rng.uniform(*RADIUS_MM)
        distance = np.linalg.norm((grid - centre) * spacing, axis=-1)
        weight = np.clip(radius + 0.5 - distance, 0.0, 1.0)  # a partial-volume rim one voxel wide
        inside = weight > 0
        density = rng.uniform(*KINDS[kind]) + rng.normal(0.0, 20.0, inside.sum())
        blended = (1 - weight[inside]) * sample.hu[inside] + weight[inside] * density
        sample.hu[inside] = np.clip(np.rint(blended), -1024, 3071).astype(sample.hu.dtype)
        placed.append(centre)
        z, y, x = centre
        ox, oy, oz = sample.origin  # LPS mm of voxel (0, 0, 0); array axes run S, P, L
        point = (ox + x * sample.spacing[2], oy + y * sample.spacing[1], oz + z * sample.spacing[0])
        lesions.append({"coordX": point[0], "coordY": point[1], "coordZ": point[2], "kind": kind, "radius_mm": radius})
    return lesions


def write_lesion_scans(folder: Path, scans: int, per_scan: int, test_scans: int) -> Path:
    """Synthetic scans with painted lesions and their ``lesions.csv`` (last ``test_scans`` scans are the test split)."""
    rng = np.random.default_rng(7)
    rows = []
    for k in range(scans):
        sample = generate_ct(SHAPE, SPACING, seed=5000 + k)  # seeds far from the pretraining scans'
        lesions = paint_lesions(sample, per_scan, rng)
        path = write_nifti(sample, folder / f"scan_{k:02d}.nii.gz")
        split = "test" if k >= scans - test_scans else "train"
        rows += [{"image_path": path.name, **lesion, "split": split} for lesion in lesions]
    csv = folder / "lesions.csv"
    columns = ["image_path", "coordX", "coordY", "coordZ", "kind", "radius_mm", "split"]
    pd.DataFrame(rows)[columns].to_csv(csv, index=False)
    return csv


def ctfm_command(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ctfm", *args], check=True, env=os.environ.copy())


def probe(csv: Path, encoder: Path, out: Path, crop: str) -> dict:
    """``ctfm features`` then ``ctfm probe``; the probe's test metrics."""
    features = out / "features.parquet"
    ctfm_command("features", str(csv), "--model", str(encoder), "--crop", crop, "--out", str(features))
    ctfm_command("probe", str(features), "--label", "kind", "--out", str(out / "probe"))
    return json.loads((out / "probe" / "probe.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=20)
    parser.add_argument("--test-scans", type=int, default=8)
    parser.add_argument("--lesions", type=int, default=6, help="lesions per scan")
    parser.add_argument("--encoder", help="an exported encoder folder; default: pretrain the quickstart one")
    parser.add_argument("--crop", choices=("ct-fm", "fmcib"), default="ct-fm", help="the crop `ctfm features` cuts")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-patches", type=int, default=4, help="patches per scan in pretraining")
    parser.add_argument("--workdir", help="keep everything here instead of a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        encoder = Path(args.encoder) if args.encoder else None
        if encoder is None:
            from learning_check import pretrain

            pretrain(work / "pretrain", scans=8, epochs=args.pretrain_epochs, patches=args.pretrain_patches)
            encoder = work / "pretrain" / "encoder"
        pretrained = ctfm.load(encoder)
        import torch

        torch.manual_seed(0)
        random_dir = ctfm.save_pretrained(
            ct_fm_encoder(init_filters=pretrained.conv_init.out_channels), work / "random"
        )
        csv = write_lesion_scans(work / "scans", args.scans, args.lesions, args.test_scans)
        table = pd.read_csv(csv)
        results = {
            name: probe(csv, path, work / name.replace(" ", "_"), args.crop)
            for name, path in (("random init", random_dir), ("pretrained", encoder))
        }
        minutes = (time.perf_counter() - start) / 60
    counts = table.groupby(["split", "kind"]).size().to_dict()
    print(
        f"{args.scans} scans ({args.test_scans} test), {len(table)} lesions {counts}, crop {args.crop}; "
        f"{minutes:.1f} min"
    )
    for name, result in results.items():
        for metric in ("balanced_accuracy", "auroc"):
            m = result["metrics"][metric]
            print(f"{name:11s} {metric:17s} {m['value']:.3f} (95% CI {m['ci_low']:.3f}-{m['ci_high']:.3f})")


if __name__ == "__main__":
    main()
