"""Does the pretrained encoder help segmentation? Fine-tune from it and from random init, compare held-out Dice.

    python benchmarks/segment_learning_check.py [--steps 60] [--train 6] [--encoder DIR]

1. Pretrains the quickstart encoder on synthetic scans with the real recipe (as benchmarks/learning_check.py does),
   unless ``--encoder`` gives an exported one.
2. Writes synthetic scans in the TotalSegmentator v2 layout (liver, spleen, kidneys, heart, spinal cord from the
   sample generator's tissues) and fine-tunes ``totalsegmentator.yaml`` twice with the same steps and seed:
   ``vars::weights=<encoder>`` and ``vars::weights=none``.
3. ``lighter test`` on held-out subjects: macro Dice over the classes, and each class's, from ``test_cases.csv``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from ctfm.data.sample_layouts import TISSUE_OF_CLASS, make_totalsegmentator_sample
from ctfm.recipes import recipes_dir, run_recipe

CLASSES = list(TISSUE_OF_CLASS)


def finetune(data: Path, run: Path, weights: str, steps: int, classes: list[str] = CLASSES) -> pd.Series:
    recipe = recipes_dir() / "totalsegmentator.yaml"
    run.mkdir(parents=True)
    common = [recipe, f"vars::data_dir={data}", f"vars::output_dir={run}", f"vars::weights={weights}"]
    common += ["vars::init_filters=8", "=vars::patch_size=[16,64,64]", "vars::precision=32-true", "vars::lr=1.0e-3"]
    common += ["vars::num_workers=1", "vars::batch_size=2", "vars::max_epochs=1000", "vars::warmup_epochs=1"]
    common += [
        f"=vars::classes={classes}".replace("'", ""),
        "trainer::accelerator=cpu",
        "trainer::sync_batchnorm=false",
    ]
    common += ["trainer::enable_progress_bar=false", "trainer::enable_model_summary=false"]
    common += ["trainer::check_val_every_n_epoch=1000"]
    cwd = os.getcwd()
    os.chdir(run)
    try:
        run_recipe("fit", [*common, f"trainer::max_steps={steps}", "trainer::num_sanity_val_steps=0"])
        run_recipe("test", common, ckpt_path=str(run / "checkpoints" / "last.ckpt"))
    finally:
        os.chdir(cwd)
    cases = pd.read_csv(run / "test_cases.csv").set_index("image_id")
    return cases.loc["mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps of each run")
    parser.add_argument("--train", type=int, default=6, help="training subjects")
    parser.add_argument("--test", type=int, default=3, help="held-out subjects")
    parser.add_argument("--encoder", help="an exported encoder folder; default: pretrain the quickstart one")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        start = time.perf_counter()
        encoder = args.encoder
        if encoder is None:
            from learning_check import pretrain

            pretrain(work / "pretrain", scans=8, epochs=args.pretrain_epochs, patches=4)
            encoder = str(work / "pretrain" / "encoder")
        pretrained_at = time.perf_counter()
        splits = ["train"] * args.train + ["val"] + ["test"] * args.test
        data = make_totalsegmentator_sample(work / "ts", splits=splits, shape=(48, 128, 128), seed=11)
        results = {
            name: finetune(data, work / name, weights, args.steps)
            for name, weights in (("pretrained", encoder), ("random init", "none"))
        }
    table = pd.DataFrame(results).T
    table.insert(0, "macro_dice", table.mean(axis=1))
    print(f"pretraining {pretrained_at - start:.0f} s; fine-tuning {args.steps} steps each, {args.train} subjects")
    print(table.round(3).to_string())


if __name__ == "__main__":
    main()
