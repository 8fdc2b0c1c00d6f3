"""CPU check of low-dose enhancement: cold diffusion trained briefly on simulated pairs, scored on held-out scans.

    PYTHONPATH=. python benchmarks/low_dose_check.py --cases 8
    PYTHONPATH=. python benchmarks/low_dose_check.py --cases 8 --pretrained PRIOR
    # PRIOR: runs/diffusion_check/run/checkpoints/last.ckpt of diffusion_learning_check.py --out runs/diffusion_check

Runs the low_dose_2d recipe on 64 x 64 slices (3 mm) of six synthetic sample scans (4 train, 1 val, 1 test by the
seeded 8:1:1 split) with Poisson low dose simulated at ``--i0`` photons, then ``lighter test`` on the last
checkpoint, and prints PSNR, SSIM and RMSE (over [-1024, 2048] HU) of the low-dose input and of the restored image
on the fixed held-out test pairs (from ``test_cases.csv``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd

from ctfm.data.sample import make_sample_dataset
from ctfm.recipes import recipes_dir, run_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--i0", type=float, default=2e3, help="incident photons of the simulated low dose")
    parser.add_argument("--cases", type=int, default=16, help="held-out test pairs")
    parser.add_argument("--pretrained", default=None, help="a 2D pretraining checkpoint of the same preset")
    parser.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="ctfm-low-dose-check-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    datalist = make_sample_dataset(work / "data", n_scans=6, shape=(48, 192, 192), seed=2)
    recipe = recipes_dir() / "diffusion" / "low_dose_2d.yaml"
    overrides = [
        f"vars::datalist={datalist}",
        f"vars::output_dir={work / 'run'}",
        f"vars::preset={args.preset}",
        "=vars::image_size=[64,64]",
        "=vars::spacing=[3.0,3.0,3.0]",
        f"vars::batch_size={args.batch_size}",
        f"vars::i0={args.i0}",
        "vars::num_workers=0",
        "vars::precision=32-true",
        "vars::lr=1.0e-3",
        "vars::warmup_steps=5",
        f"vars::steps_per_epoch={args.steps}",
        "vars::max_epochs=1",
        "vars::val_cases=4",
        f"vars::test_cases={args.cases}",
        "trainer::accelerator=cpu",
        "trainer::enable_progress_bar=false",
        "trainer::num_sanity_val_steps=0",
        "trainer::log_every_n_steps=1",
    ]
    if args.pretrained:
        overrides.append(f"vars::pretrained={Path(args.pretrained).resolve()}")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        run_recipe("fit", [recipe, *overrides])
        run_recipe("test", [recipe, *overrides], ckpt_path=str(work / "run" / "checkpoints" / "last.ckpt"))
    finally:
        os.chdir(cwd)
    cases = pd.read_csv(work / "run" / "test_cases.csv")
    mean = cases[cases["case"] == "mean"].iloc[0]
    print(f"{len(cases) - 1} held-out test pairs, I0 {args.i0:g}, {args.steps} training steps, preset {args.preset}")
    print(f"{'':<10} {'PSNR dB':>8} {'SSIM':>6} {'RMSE HU':>8}")
    for name in ("low_dose", "restored"):
        print(f"{name:<10} {mean[f'psnr_{name}']:>8.2f} {mean[f'ssim_{name}']:>6.3f} {mean[f'rmse_{name}']:>8.1f}")
    print(f"per case: {work / 'run' / 'test_cases.csv'}")


if __name__ == "__main__":
    main()
