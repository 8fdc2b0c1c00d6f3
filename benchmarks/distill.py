"""How much of its teacher does a distilled student keep, and how much faster is it?

    python benchmarks/distill.py [--teacher-filters 32] [--student-filters 8] [--epochs 4] [--timing-only]

1. Distils a teacher encoder (random init at ``--teacher-filters``, by default CT-FM's own shape, or
   ``--teacher PATH`` for any model ctfm.load reads) into a ``--student-filters`` SegResEncoder (the recipe's
   default width) with the real recipe (`lighter fit distill.yaml`) on synthetic sample scans, and exports the
   student with `ctfm export`.
2. On a held-out synthetic scan: the embedding time of teacher and student with `ctfm.embed` on the same patches,
   both for the networks alone (the scan read and preprocessed once, as a corpus job on a cache does) and end to end
   from the file (reading and resampling are the same fixed cost for both); the multiply-accumulates of one patch
   (torch's FLOP counter: the machine-independent ratio); the overlap of each patch's top-10 neighbours in teacher
   space and in student space; and the tissue-probe balanced accuracy of each (the probe of
   benchmarks/learning_check.py). The straightforward alternative to a student is running the teacher itself, so
   each ratio is teacher / student.
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
from torch.utils.flop_counter import FlopCounterMode

import ctfm
from ctfm.data.sample import generate_ct, make_sample_dataset, write_nifti
from ctfm.nn import ct_fm_encoder
from ctfm.recipes import recipes_dir, run_recipe
from ctfm.transforms.preprocess import CTPreprocessing


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


def patch_flops(model: torch.nn.Module) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, *PATCH))
    return counter.get_total_flops()


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
    parser.add_argument("--teacher-filters", type=int, default=32)
    parser.add_argument("--student-filters", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--timing-only", action="store_true", help="time an untrained student; skip distilling")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.teacher is None:
            torch.manual_seed(0)
            args.teacher = str(ctfm.save_pretrained(ct_fm_encoder(init_filters=args.teacher_filters), workdir / "t"))
        teacher = ctfm.load(args.teacher)
        if args.timing_only:  # the weights do not change the time: an untrained student of the same shape
            student = ct_fm_encoder(init_filters=args.student_filters).eval()
        else:
            start = time.perf_counter()
            student = distil(workdir, args.teacher, args.student_filters, args.epochs, args.scans)
            minutes = (time.perf_counter() - start) / 60
            print(f"distillation: {args.scans} synthetic scans, {args.epochs} epochs of 8 steps, {minutes:.1f} min")
        models = {"teacher": teacher, "student": student}
        seconds = embedding_seconds(models, workdir)

    for name, model in models.items():
        parameters = sum(p.numel() for p in model.parameters())
        print(
            f"{name}: {parameters:,} parameters, {patch_flops(model) / 1e9:.2f} GFLOP per patch, "
            f"networks {seconds[name, 'networks']:.2f} s per scan, end to end {seconds[name, 'file']:.2f} s per scan"
        )
    speed_up = {how: seconds["teacher", how] / seconds["student", how] for how in ("networks", "file")}
    flops = patch_flops(teacher) / patch_flops(student)
    print(
        f"student speed-up: networks {speed_up['networks']:.1f}x, end to end {speed_up['file']:.1f}x, "
        f"FLOPs {flops:.1f}x"
    )
    if not args.timing_only:
        probe_and_overlap(models)


def embedding_seconds(models: dict[str, torch.nn.Module], workdir: Path) -> dict[tuple[str, str], float]:
    """Seconds to embed one held-out scan with each model: from the preprocessed volume, and from its file."""
    scan = write_nifti(generate_ct(seed=3000), workdir / "held_out.nii.gz")
    volume = CTPreprocessing(min_size=PATCH)(scan)[0].numpy()  # preprocessed (z, y, x): taken as model input
    seconds = {}
    for name, model in models.items():
        for how, source in (("networks", volume), ("file", scan)):
            seconds[name, how] = best_seconds(
                lambda m=model, x=source: ctfm.embed(m, x, patch_size=PATCH, progress=False), repeats=3
            )
    return seconds


def probe_and_overlap(models: dict[str, torch.nn.Module]) -> None:
    train_patches, train_y = probe_data([1000, 1001, 1002], stride=(8, 32, 32))
    test_patches, test_y = probe_data([2000, 2001], stride=(8, 32, 32))
    kept = [label for label in np.unique(train_y) if (train_y == label).sum() >= MIN_PER_CLASS and label in test_y]
    train_mask, test_mask = np.isin(train_y, kept), np.isin(test_y, kept)
    train = [p for p, keep in zip(train_patches, train_mask) if keep]
    test = [p for p, keep in zip(test_patches, test_mask) if keep]
    test_features = {}
    for name, model in models.items():
        train_x, test_features[name] = features(model, train), features(model, test)
        accuracy = probe_accuracy(train_x, train_y[train_mask], test_features[name], test_y[test_mask])
        print(f"{name}: tissue probe balanced accuracy {accuracy:.3f}")
    overlap = neighbour_overlap(test_features["teacher"], test_features["student"])
    print(f"top-10 neighbour overlap {overlap:.3f}")
    print(f"probe: {len(kept)} tissues, chance {1 / len(kept):.3f}; {test_mask.sum()} held-out patches")


if __name__ == "__main__":
    main()
