"""CPU learning check of diffusion pretraining: the small preset on slices (or patches) of the synthetic sample scans.

    PYTHONPATH=. python benchmarks/diffusion_learning_check.py --steps 300
    PYTHONPATH=. python benchmarks/diffusion_learning_check.py --steps 300 --spatial-dims 3   # 16 x 32 x 32 at 6 mm

Trains through the pretrain_2d recipe (slices at 3 mm in-plane, so a 64 x 64 slice holds the whole torso; or
pretrain_3d on 16 x 32 x 32 patches at 6 mm), prints
the loss of the first and last 10% of steps, then samples at the lung (1500/-500) and mediastinal (400/0) windows
and reports the mean intensity ([-1, 1]) inside the body (central quarter of the image) and outside it (the border
frame), next to the same numbers for real slices of the training data at each window. Soft tissue sits near the
top of the lung window and in the middle of the mediastinal one, so samples at the lung window should be brighter
inside the body; air is -1 outside at both.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ctfm.data.diffusion import DiffusionDataset
from ctfm.data.sample import make_sample_dataset
from ctfm.hub.checkpoint import load_denoiser
from ctfm.nn.diffusion.sampling import sample
from ctfm.recipes import recipes_dir, run_recipe

WINDOWS = {"lung 1500/-500": (1500.0, -500.0), "mediastinal 400/0": (400.0, 0.0)}
SIZE = 64
#: Image size, spacing (mm) and batch by dimension: a 64 x 64 slice at 3 mm, or a 16 x 32 x 32 patch at 6 mm (both
#: hold the whole synthetic torso in-plane; the 3D one is coarser so a CPU step stays near a second).
SHAPES = {2: (SIZE, SIZE), 3: (16, 32, 32)}
SPACING = {2: 3.0, 3: 6.0}
BATCH = {2: 8, 3: 4}


def inside_outside(images: torch.Tensor) -> tuple[float, float]:
    """Mean of the central quarter and of a 4-pixel border frame of ``(n, 1, [z,] s, s)`` images (every slice)."""
    s = images.shape[-1]
    centre = images[..., s // 4 : 3 * s // 4, s // 4 : 3 * s // 4].mean()
    frame = torch.ones(s, s, dtype=torch.bool)
    frame[4:-4, 4:-4] = False
    return float(centre), float(images[..., frame].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2, help="slices (2) or patches (3)")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument(
        "--guidance", type=float, nargs="+", default=[1.0, 4.0], help="classifier-free guidance scales to sample at"
    )
    parser.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    args = parser.parse_args()
    torch.manual_seed(0)
    shape, spacing = SHAPES[args.spatial_dims], SPACING[args.spatial_dims]
    work = Path(args.out or tempfile.mkdtemp(prefix="ctfm-diffusion-check-"))
    work.mkdir(parents=True, exist_ok=True)
    datalist = make_sample_dataset(work / "data", n_scans=4, shape=(48, 192, 192), seed=0)
    overrides = [
        f"vars::datalist={datalist}",
        f"vars::output_dir={work / 'run'}",
        "vars::preset=small",
        f"=vars::image_size=[{','.join(map(str, shape))}]",
        f"=vars::spacing=[{','.join([str(spacing)] * 3)}]",
        f"vars::batch_size={BATCH[args.spatial_dims]}",
        "vars::num_workers=0",
        "vars::precision=32-true",
        "vars::lr=1.0e-3",
        "vars::warmup_steps=20",
        f"vars::steps_per_epoch={args.steps}",
        "vars::max_epochs=1",
        "trainer::accelerator=cpu",
        "trainer::enable_progress_bar=false",
        "trainer::log_every_n_steps=1",
    ]
    cwd = os.getcwd()
    os.chdir(work)
    try:
        run_recipe("fit", [recipes_dir() / "diffusion" / f"pretrain_{args.spatial_dims}d.yaml", *overrides])
    finally:
        os.chdir(cwd)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(work / "run" / "logs" / "version_0"))
    events.Reload()
    losses = [e.value for e in events.Scalars("train/loss/step")]
    tenth = max(1, len(losses) // 10)
    print(f"loss: first {tenth} steps {np.mean(losses[:tenth]):.4f}, last {tenth} steps {np.mean(losses[-tenth:]):.4f}")

    network, _ = load_denoiser(work / "run" / "checkpoints" / "last.ckpt", spatial_dims=args.spatial_dims)
    from ctfm.data.cache import PreprocessCache
    from ctfm.data.datalist import read_datalist
    from ctfm.transforms.preprocess import CTPreprocessing

    cache = PreprocessCache(
        work / "data" / "ctfm_cache",
        CTPreprocessing(spacing=(spacing,) * 3, min_size=(1, *shape) if args.spatial_dims == 2 else shape),
    )
    scans = cache.prepare(read_datalist(datalist)["image"].tolist(), progress=False).scans
    from ctfm.plotting import image_grid

    print(f"{'window':<20} {'guidance':>8} {'inside':>8} {'outside':>8}")
    for name, window in WINDOWS.items():
        real = DiffusionDataset(scans, args.spatial_dims, shape, [window], max_zoom=1.0, flip_prob=0, intensity=0)
        real.set_random_state(0)
        inside, outside = inside_outside(torch.stack([real[i]["image"] for i in range(32)]))
        print(f"{name:<20} {'real':>8} {inside:>8.3f} {outside:>8.3f}")
        for scale in args.guidance:
            generated = sample(
                network, shape, window, n=args.n, steps=args.sample_steps, guidance_scale=scale,
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            inside, outside = inside_outside(generated)
            print(f"{'':<20} {scale:>8g} {inside:>8.3f} {outside:>8.3f}")
            picture = work / f"samples_{window[0]:g}_{window[1]:g}_guidance{scale:g}.png"
            middle = generated[:, 0] if args.spatial_dims == 2 else generated[:, 0, shape[0] // 2]  # middle slice
            image_grid(list(middle.numpy()), picture, title=f"{name}, guidance {scale:g}")
    print(f"pictures in {work}")


if __name__ == "__main__":
    main()
