"""The seed-004 loop on sample data: prototypes from 2 labelled scans -> pseudo-labels on unlabelled ones ->
fine-tune the segmentation recipe on them, next to the same fine-tuning on the true labels.

    python benchmarks/pseudo_label_loop.py [--encoder DIR] [--steps 40] [--picture overlay.png]

1. Pretrains the quickstart encoder on synthetic scans (benchmarks/learning_check.py's ``pretrain``) unless
   ``--encoder`` gives an exported one.
2. ``compute_prototypes`` from 2 sample scans with their true liver and heart labels, then ``pseudo_label`` on 4
   other scans: Dice and average surface distance of the pseudo-labels against the generator's true labels, and
   the 4 scans written in the TotalSegmentator v2 layout.
3. ``totalsegmentator.yaml`` fine-tuned (tiny widths, random init, same steps and seed) on the pseudo-labels and on
   the true labels of the same 4 scans; ``lighter test`` on 2 held-out scans with true labels: Dice of both.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from segment_learning_check import finetune

import ctfm
from ctfm.analysis.prototypes import compute_prototypes
from ctfm.analysis.pseudo_labels import PostProcessing, add_totalsegmentator_subject, pseudo_label
from ctfm.data.sample import LABEL, generate_ct, write_labels_nifti, write_nifti
from ctfm.transforms.preprocess import CTPreprocessing

#: Sample tissue -> class name (TotalSegmentator's, so the recipe can select them), in label order.
CLASSES = {"liver": LABEL["liver"], "heart": LABEL["heart"]}
SHAPE, SPACING = (40, 128, 128), (3.0, 1.5, 1.5)


def write_scan(folder: Path, name: str, seed: int) -> tuple[Path, Path]:
    """A sample scan and its label map with the CLASSES as 1..K (the prototypes' values)."""
    sample = generate_ct(SHAPE, SPACING, seed=seed)
    scan = write_nifti(sample, folder / f"{name}.nii.gz")
    tissue = nib.load(write_labels_nifti(sample, folder / f"{name}_tissue.nii.gz"))
    array = np.asarray(tissue.dataobj)
    labels = np.zeros(array.shape, np.uint8)
    for value, tissue_label in enumerate(CLASSES.values(), start=1):
        labels[array == tissue_label] = value
    path = folder / "truth" / f"{name}.nii.gz"
    path.parent.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(labels, tissue.affine), path)
    return scan, path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", help="an exported encoder folder; default: pretrain the quickstart one")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40, help="fine-tuning steps of each run")
    parser.add_argument("--centres", type=int, default=8, help="k-means prototypes per class")
    parser.add_argument("--picture", help="copy the first target's overlay here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        start = time.perf_counter()
        encoder = args.encoder
        if encoder is None:
            from learning_check import pretrain

            pretrain(work / "pretrain", scans=8, epochs=args.pretrain_epochs, patches=4)
            encoder = str(work / "pretrain" / "encoder")
        model = ctfm.load(encoder)
        pretrained_at = time.perf_counter()
        scans = work / "scans"
        scans.mkdir()
        labelled = [write_scan(scans, f"labelled{i}", 500 + i) for i in range(2)]
        unlabelled = [write_scan(scans, f"unlabelled{i}", 600 + i) for i in range(4)]
        splits = ("val", "test", "test")
        held_out = [(split, *write_scan(scans, f"{split}{i}", 700 + i)) for i, split in enumerate(splits)]
        names = ("background", *CLASSES)
        prototypes = compute_prototypes(
            model, [s for s, _ in labelled], [t for _, t in labelled], dict(enumerate(CLASSES, start=1)),
            patch_size=(8, 16, 16), overlap=0.5, preprocess=CTPreprocessing(spacing=None), centres=args.centres,
        )  # fmt: skip
        post = PostProcessing(sigma_mm=3.0, threshold="otsu", largest_component=True)
        layouts = {"pseudo-labels": work / "ts_pseudo", "true labels": work / "ts_true"}
        report = pseudo_label(
            [s for s, _ in unlabelled], prototypes, model, work / "pseudo", post=post,
            reference_dir=scans / "truth", totalsegmentator_layout=layouts["pseudo-labels"],
        )  # fmt: skip
        labelled_at = time.perf_counter()
        if args.picture:
            Path(args.picture).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "pseudo" / "unlabelled0.png", args.picture)
        for scan, truth in unlabelled:
            image = nib.load(truth)
            add_totalsegmentator_subject(layouts["true labels"], scan.name[: -len(".nii.gz")], scan,
                                         np.asarray(image.dataobj), image.affine, names)  # fmt: skip
        for layout in layouts.values():
            for split, scan, truth in held_out:
                image = nib.load(truth)
                add_totalsegmentator_subject(layout, f"{split}_{scan.name[:-7]}", scan, np.asarray(image.dataobj),
                                             image.affine, names, split)  # fmt: skip
        results = {
            name: finetune(layout, work / name.replace(" ", "_"), "none", args.steps, classes=list(CLASSES))
            for name, layout in layouts.items()
        }
        done = time.perf_counter()
    quality = report.evaluation.groupby("class", sort=False)[["dice", "asd_mm"]].mean()
    print(f"encoder {'given' if args.encoder else 'pretrained'} in {pretrained_at - start:.0f} s; prototypes and "
          f"pseudo-labels of {len(report.labelled)} scans in {labelled_at - pretrained_at:.0f} s; "
          f"two fine-tunings of {args.steps} steps in {done - labelled_at:.0f} s")  # fmt: skip
    print("pseudo-labels against the generator's true labels (mean over the 4 unlabelled scans):")
    print(quality.round(3).to_string())
    dice = pd.DataFrame(results).T[[f"{name}_dice" for name in CLASSES]]
    dice.columns = list(CLASSES)
    dice.insert(0, "macro_dice", dice.mean(axis=1))
    print("held-out Dice of totalsegmentator.yaml fine-tuned on each (2 test scans):")
    print(dice.round(3).to_string())


if __name__ == "__main__":
    main()
