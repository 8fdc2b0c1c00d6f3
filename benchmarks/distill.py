"""How much of its teacher does a distilled student keep, and how much faster is it?

    python benchmarks/distill.py [--teacher-filters 16] [--student-filters 4] [--epochs 6]

1. Distils a teacher encoder (random init at ``--teacher-filters``, or ``--teacher PATH`` for any model ctfm.load
   reads) into a ``--student-filters`` SegResEncoder with the real recipe (`lighter fit distill.yaml`) on synthetic
   sample scans, and exports the student with `ctfm export`.
2. On held-out synthetic scans: embedding time per scan with `ctfm.embed` (teacher vs student, same patches), the
   overlap of each patch's top-10 neighbours in teacher space and in student space, and the tissue-probe balanced
   accuracy of each (the probe of benchmarks/learning_check.py). The straightforward alternative to a student is
   running the teacher itself, so the ratio is teacher time / student time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import best_seconds
from learning_check import MIN_PER_CLASS, PATCH, features, probe_accuracy, probe_data

import ctfm
from ctfm.data.sample import generate_ct, make_sample_dataset, write_nifti
from ctfm.nn import ct_fm_encoder
from ctfm.recipes import recipes_dir, run_recipe


def distil(workdir: Path, teacher: str, student_filters: int, epochs: int, scans: int) -> torch.nn.Module:
    datalist = make_sample_dataset(workdir / "data", n_scans=scans, seed=0)
    overrides = [
        f"vars::datalist={datalist}",
        f"vars::output_dir={workdir / 'run'}",
        f"vars::teacher={teacher}",
        f"vars::student_init_filters={student_filters}",
        f"=vars::patch_size={list(PATCH)}",
        "vars::patches_per_scan=6",
        "vars::scans_per_device=2",
        "vars::steps_per_epoch=8",
        f"vars::max_epochs={epochs}",
        "vars::warmup_epochs=1",
        "vars::lr=2.0e-3",
        "vars::num_workers=1",
        "vars::precision=32-true",
        "vars::checkpoint_every_n_epochs=1",
        "trainer::accelerator=cpu",
        "trainer::sync_batchnorm=false",
        "trainer::enable_progress_bar=false",
    ]
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        run_recipe("fit", [recipes_dir() / "distill.yaml", *overrides])
    finally:
        os.chdir(cwd)
    return ctfm.load(ctfm.export_encoder(workdir / "run" / "checkpoints" / "last.ckpt", workdir / "student"))


def neighbour_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each row's top-k cosine neighbours (itself excluded) that two embeddings share."""

    def top(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        similarity = x @ x.T
        np.fill_diagonal(similarity, -np.inf)
        return np.argsort(-similarity, axis=1)[:, :k]

    ta, tb = top(a), top(b)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(ta, tb)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="any model ctfm.load reads (default: a random --teacher-filters encoder)")
    parser.add_argument("--teacher-filters", type=int, default=16)
    parser.add_argument("--student-filters", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--scans", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.teacher is None:
            torch.manual_seed(0)
            args.teacher = str(ctfm.save_pretrained(ct_fm_encoder(init_filters=args.teacher_filters), workdir / "t"))
        teacher = ctfm.load(args.teacher)
        start = time.perf_counter()
        student = distil(workdir, args.teacher, args.student_filters, args.epochs, args.scans)
        minutes = (time.perf_counter() - start) / 60
        scan = write_nifti(generate_ct(seed=3000), workdir / "held_out.nii.gz")
        seconds = {
            name: best_seconds(lambda m=model: ctfm.embed(m, scan, patch_size=PATCH, progress=False), repeats=3)
            for name, model in (("teacher", teacher), ("student", student))
        }

    train_patches, train_y = probe_data([1000, 1001, 1002], stride=(8, 32, 32))
    test_patches, test_y = probe_data([2000, 2001], stride=(8, 32, 32))
    kept = [label for label in np.unique(train_y) if (train_y == label).sum() >= MIN_PER_CLASS and label in test_y]
    train_mask, test_mask = np.isin(train_y, kept), np.isin(test_y, kept)
    train = [p for p, keep in zip(train_patches, train_mask) if keep]
    test = [p for p, keep in zip(test_patches, test_mask) if keep]
    models = {"teacher": teacher, "student": student}
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    print(f"distillation: {args.scans} synthetic scans, {args.epochs} epochs of 8 steps, {minutes:.1f} min")
    accuracy, test_features = {}, {}
    for name, model in models.items():
        train_x, test_features[name] = features(model, train), features(model, test)
        accuracy[name] = probe_accuracy(train_x, train_y[train_mask], test_features[name], test_y[test_mask])
        print(
            f"{name}: {parameters[name]:,} parameters, {seconds[name]:.2f} s per scan, "
            f"tissue probe balanced accuracy {accuracy[name]:.3f}"
        )
    overlap = neighbour_overlap(test_features["teacher"], test_features["student"])
    print(f"student speed-up {seconds['teacher'] / seconds['student']:.1f}x; top-10 neighbour overlap {overlap:.3f}")
    print(f"probe: {len(kept)} tissues, chance {1 / len(kept):.3f}; {test_mask.sum()} held-out patches")


if __name__ == "__main__":
    main()
