"""Does intra-sample SimCLR learn anything? A linear probe on frozen patch embeddings, pretrained vs random.

    python benchmarks/learning_check.py [--epochs 10] [--patches 8] [--scans 8]

1. Pretrains the small quickstart encoder on synthetic sample scans with the real recipe (`lighter fit
   quickstart.yaml`) for a few minutes on a CPU, and exports it.
2. Embeds patches of held-out synthetic scans (never seen in pretraining) with the pretrained encoder and with a
   randomly initialised encoder of the same shape.
3. Fits the same logistic-regression probe on each to predict the tissue at the patch centre, trained on some
   held-out scans and scored on others (balanced accuracy, so the majority class does not flatter either).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import ctfm
from ctfm.data.sample import TISSUES, generate_ct, make_sample_dataset
from ctfm.embedding import patch_starts
from ctfm.nn import ct_fm_encoder, pooled_features
from ctfm.recipes import recipes_dir, run_recipe
from ctfm.transforms.preprocess import HU_RANGE, PRETRAINING_SPACING

PATCH = (16, 64, 64)
HELD_OUT_SHAPE = (40, 192, 192)
MIN_PER_CLASS = 8


def pretrain(workdir: Path, scans: int, epochs: int, patches: int) -> torch.nn.Module:
    datalist = make_sample_dataset(workdir / "data", n_scans=scans, seed=0)
    recipes = recipes_dir()
    inputs = [recipes / "quickstart.yaml", f"vars::datalist={datalist}"]
    inputs += [f"vars::output_dir={workdir}", f"vars::max_epochs={epochs}", f"vars::patches_per_scan={patches}"]
    inputs += ["trainer::enable_progress_bar=false"]
    run_recipe("fit", inputs)
    return ctfm.load(ctfm.export_encoder(workdir / "checkpoints" / "last.ckpt", workdir / "encoder"))


def probe_data(seeds: list[int], stride: tuple[int, int, int]) -> tuple[list[torch.Tensor], np.ndarray]:
    """Patches of held-out scans (already at the pretraining spacing, in SPL order) and the tissue at each centre."""
    low, high = HU_RANGE
    patches, labels = [], []
    for seed in seeds:
        sample = generate_ct(HELD_OUT_SHAPE, PRETRAINING_SPACING, seed=seed)
        volume = torch.from_numpy(((sample.hu.astype(np.float32) - low) / (high - low)).clip(0, 1))
        for z, y, x in patch_starts(volume.shape, PATCH, overlap=1 - stride[0] / PATCH[0]):
            for dy in range(0, PATCH[1], stride[1]):
                cy = min(y + dy, volume.shape[1] - PATCH[1])
                centre = (z + PATCH[0] // 2, cy + PATCH[1] // 2, x + PATCH[2] // 2)
                if sample.labels[centre] == 0:  # air around the body says nothing about anatomy
                    continue
                patches.append(volume[None, z : z + PATCH[0], cy : cy + PATCH[1], x : x + PATCH[2]])
                labels.append(sample.labels[centre])
    return patches, np.array(labels)


@torch.inference_mode()
def features(model: torch.nn.Module, patches: list[torch.Tensor], batch: int = 16) -> np.ndarray:
    model.eval()
    return torch.cat(
        [pooled_features(model, torch.stack(patches[i : i + batch])) for i in range(0, len(patches), batch)]
    ).numpy()


def probe_accuracy(train_x, train_y, test_x, test_y) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0, class_weight="balanced"))
    probe.fit(train_x, train_y)
    return balanced_accuracy_score(test_y, probe.predict(test_x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patches", type=int, default=8, help="patches per scan: the negatives each view sees")
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--workdir", default=None, help="keep the run here instead of a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        pretrained = pretrain(workdir, args.scans, args.epochs, args.patches)
        minutes = (time.perf_counter() - start) / 60

    torch.manual_seed(0)
    random = ct_fm_encoder(init_filters=pretrained.conv_init.out_channels)
    train_patches, train_y = probe_data([1000, 1001, 1002], stride=(8, 32, 32))
    test_patches, test_y = probe_data([2000, 2001], stride=(8, 32, 32))
    kept = [label for label in np.unique(train_y) if (train_y == label).sum() >= MIN_PER_CLASS and label in test_y]
    train_mask, test_mask = np.isin(train_y, kept), np.isin(test_y, kept)
    print(
        f"pretraining: {args.scans} synthetic scans, {args.epochs} epochs, {args.patches} patches per scan, "
        f"{minutes:.1f} min on this machine"
    )
    print(
        f"probe: {train_mask.sum()} train / {test_mask.sum()} test patches from unseen scans, "
        f"{len(kept)} tissues: {', '.join(TISSUES[k] for k in kept)}"
    )
    scores = {}
    for name, model in (("random init", random), ("pretrained", pretrained)):
        train_x = features(model, [p for p, k in zip(train_patches, train_mask) if k])
        test_x = features(model, [p for p, k in zip(test_patches, test_mask) if k])
        scores[name] = probe_accuracy(train_x, train_y[train_mask], test_x, test_y[test_mask])
        print(f"linear probe balanced accuracy, {name:11s}: {scores[name]:.3f}")
    print(f"chance: {1 / len(kept):.3f}; pretrained - random = {scores['pretrained'] - scores['random init']:+.3f}")


if __name__ == "__main__":
    main()
