"""Does the pretrained encoder help segmentation? Fine-tune from it and from random init, compare held-out Dice.

    python benchmarks/segment_learning_check.py [--steps 60] [--train 6] [--seeds 0 1 2] [--encoder DIR]

1. Pretrains the quickstart encoder on 8 synthetic scans with the quickstart's settings (4 epochs, 4 patches per
   scan; ``--pretrain-epochs``/``--pretrain-patches`` for more), unless ``--encoder`` gives an exported one.
2. Writes synthetic scans in the TotalSegmentator v2 layout (liver, spleen, kidneys, heart, spinal cord from the
   sample generator's tissues) and fine-tunes ``totalsegmentator.yaml`` from that encoder and from random init,
   once per seed (``PL_GLOBAL_SEED``: the decoder's initialisation, the patches and augmentations), with the same
   steps. Fine-tuning keeps the scans' own 1.5 mm voxels, as the published recipe does; ``--spacing 3 1 1``
   resamples to the encoder's pretraining voxels instead.
3. ``lighter test`` on held-out subjects: macro Dice over the classes, and each class's, from ``test_cases.csv``;
   the mean and spread over the seeds.
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
from ctfm.transforms.preprocess import PRETRAINING_SPACING

CLASSES = list(TISSUE_OF_CLASS)


def finetune(
    data: Path,
    run: Path,
    weights: str,
    steps: int,
    seed: int = 0,
    spacing: list[float] | None = None,
    classes: list[str] = CLASSES,
) -> pd.Series:
    recipe = recipes_dir() / "totalsegmentator.yaml"
    run.mkdir(parents=True)
    common = [recipe, f"vars::data_dir={data}", f"vars::output_dir={run}", f"vars::weights={weights}"]
    common += ["vars::init_filters=8", "=vars::patch_size=[16,64,64]", "vars::precision=32-true", "vars::lr=1.0e-3"]
    common += ["vars::num_workers=1", "vars::batch_size=2", "vars::max_epochs=1000", "vars::warmup_epochs=1"]
    common += [
        f"=vars::classes={classes}".replace("'", ""),
        f"=vars::spacing={spacing}" if spacing else "vars::spacing=null",
        "trainer::accelerator=cpu",
        "trainer::sync_batchnorm=false",
    ]
    common += ["trainer::enable_progress_bar=false", "trainer::enable_model_summary=false"]
    common += ["trainer::check_val_every_n_epoch=1000"]
    cwd = os.getcwd()
    os.chdir(run)
    os.environ["PL_GLOBAL_SEED"] = str(seed)  # lighter's Runner seeds everything from it
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one pair of runs per seed")
    parser.add_argument("--encoder", help="an exported encoder folder; default: pretrain the quickstart one")
    parser.add_argument("--pretrain-epochs", type=int, default=4)
    parser.add_argument("--pretrain-patches", type=int, default=4, help="patches per scan in pretraining")
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=[0.0, 0.0, 0.0],
        metavar=("Z", "Y", "X"),
        help=f"fine-tuning voxels in mm, e.g. the pretraining {PRETRAINING_SPACING}; 0 0 0 (default): the scans' own",
    )
    parser.add_argument("--workdir", help="keep the runs here instead of a temporary folder")
    args = parser.parse_args()
    spacing = args.spacing if any(args.spacing) else None

    with tempfile.TemporaryDirectory() as folder:
        work = Path(args.workdir or folder).resolve()
        start = time.perf_counter()
        encoder = args.encoder
        if encoder is None:
            from learning_check import pretrain

            pretrain(work / "pretrain", scans=8, epochs=args.pretrain_epochs, patches=args.pretrain_patches)
            encoder = str(work / "pretrain" / "encoder")
        pretrained_at = time.perf_counter()
        splits = ["train"] * args.train + ["val"] + ["test"] * args.test
        data = make_totalsegmentator_sample(work / "ts", splits=splits, shape=(48, 128, 128), seed=11)
        rows = {}
        for seed in args.seeds:
            for name, weights in (("pretrained", encoder), ("random init", "none")):
                rows[(name, seed)] = finetune(
                    data, work / f"{name.replace(' ', '_')}_{seed}", weights, args.steps, seed, spacing
                )
                print(f"seed {seed}, {name}: macro Dice {rows[(name, seed)].mean():.3f}", flush=True)
    table = pd.DataFrame(rows).T
    table.insert(0, "macro_dice", table.mean(axis=1))
    table.index.names = ["start", "seed"]
    print(
        f"pretraining {pretrained_at - start:.0f} s; fine-tuning {args.steps} steps each, {args.train} subjects, "
        f"spacing {spacing or 'native 1.5 mm'}"
    )
    print(table.round(3).to_string())
    summary = table.groupby(level="start")["macro_dice"].agg(["mean", "std", "min", "max"])
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
