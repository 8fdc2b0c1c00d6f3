"""Guided restoration on held-out sample images: a trained small prior against an untrained one and the baselines.

    PYTHONPATH=. python benchmarks/diffusion_learning_check.py --steps 300 --out runs/diffusion_check
    PYTHONPATH=. python benchmarks/diffusion_restoration.py runs/diffusion_check/run/checkpoints/last.ckpt
    (add --spatial-dims 3 to the learning check for a 3D prior; this script reads the dimension from the checkpoint)

Slices (or 3D patches) of synthetic scans the prior never saw (another dataset seed), at the learning check's size
and spacing, at the lung window 1500/-500. Super-resolution: 4x (3D: 2x) average-pooled input, guided sampling with
the down-sampling data-consistency step, next to bicubic (3D: trilinear) interpolation. Sparse view (2D only): a
parallel-beam sinogram of ``--views`` angles, guided sampling with a SART step, next to filtered back-projection.
Each guided result is run with the trained prior and with an untrained network of the same preset (MONAI
zero-initialises its output, so it predicts no noise: what is left is the data-consistency step alone), so the gain
from the prior is visible. PSNR and SSIM are on the HU scale over the window's range [-1250, 250] HU
(``ctfm.image_quality``). Each guided run starts from pure noise, and again from the baseline noised to
``--strength`` of the schedule (``sample(init=...)``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusion_learning_check import SHAPES, SIZE, SPACING

from ctfm.data.cache import PreprocessCache
from ctfm.data.datalist import read_datalist
from ctfm.data.diffusion import DiffusionDataset
from ctfm.data.sample import make_sample_dataset
from ctfm.hub.checkpoint import load_denoiser
from ctfm.image_quality import restoration_metrics
from ctfm.nn.diffusion import diffusion_unet
from ctfm.nn.diffusion.operators import Downsample, ParallelBeam
from ctfm.nn.diffusion.sampling import sample
from ctfm.transforms.preprocess import CTPreprocessing
from ctfm.transforms.width_level import remove_window

WINDOW = (1500.0, -500.0)


def held_out(work: Path, n: int, spatial_dims: int) -> torch.Tensor:
    """``(n, 1, *SHAPES[spatial_dims])`` images in [-1, 1] at the lung window from scans of a dataset seed training
    never used, at the learning check's spacing."""
    datalist = make_sample_dataset(work / "heldout", n_scans=2, shape=(48, 192, 192), seed=1)
    shape, spacing = SHAPES[spatial_dims], SPACING[spatial_dims]
    min_size = (1, *shape) if spatial_dims == 2 else shape
    cache = PreprocessCache(work / "heldout" / "cache", CTPreprocessing(spacing=(spacing,) * 3, min_size=min_size))
    scans = cache.prepare(read_datalist(datalist)["image"].tolist(), progress=False).scans
    dataset = DiffusionDataset(scans, spatial_dims, shape, [WINDOW], max_zoom=1.0, flip_prob=0, intensity=0)
    dataset.set_random_state(0)
    return torch.stack([dataset[i]["image"] for i in range(n)])


def field_of_view(size: int) -> torch.Tensor:
    """The circle inscribed in a ``size`` x ``size`` image (scikit-image's ``circle=True``)."""
    radius = (torch.arange(size) - (size - 1) / 2) ** 2
    return radius[:, None] + radius[None, :] <= ((size - 1) / 2) ** 2


def score(images: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over the images, in HU over the window's range."""
    metrics = restoration_metrics(remove_window(images, *WINDOW), remove_window(truth, *WINDOW), (-1250.0, 250.0))
    return float(metrics["psnr"].mean()), float(metrics["ssim"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a pretraining checkpoint (the learning check's last.ckpt), 2D or 3D")
    parser.add_argument("--n", type=int, default=4, help="held-out slices")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--factor", type=int, help="super-resolution factor (default 4 in 2D, 2 in 3D)")
    parser.add_argument("--views", type=int, default=16, help="sparse-view projection angles")
    parser.add_argument(
        "--strength", type=float, default=0.1, help="warm start: noise the baseline to this point of the schedule"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="ctfm-diffusion-restoration-"))
    trained, _ = load_denoiser(args.checkpoint)
    dims = trained.spatial_dims
    shape = SHAPES[dims]
    truth = held_out(work, args.n, dims)
    priors = {"trained": trained, "untrained": diffusion_unet(dims, "small").eval()}

    rows: list[tuple[str, str, float, float]] = []
    downsample = Downsample(args.factor or (4 if dims == 2 else 2), dims)
    low = downsample.forward(truth)
    interpolation = "bicubic" if dims == 2 else "trilinear"
    up = F.interpolate(low, size=shape, mode=interpolation).clamp(-1, 1)
    rows.append(("super-resolution", interpolation, *score(up, truth)))
    tasks = [("super-resolution", downsample, low, truth, up)]
    if dims == 2:  # parallel-beam sparse view is a 2D operator
        beam = ParallelBeam.sparse(args.views)
        sinogram = beam.forward(truth)
        # The reference is what the scanner sees: air (-1) outside the field of view, the circle ParallelBeam images.
        truth_fov = torch.where(field_of_view(SIZE), truth, torch.full_like(truth, -1.0))
        fbp = beam.filtered_back_projection(sinogram).clamp(-1, 1)
        rows.append(("sparse view", "FBP", *score(fbp, truth_fov)))
        tasks.append(("sparse view", beam, sinogram, truth_fov, fbp))
    for name, network in priors.items():
        for task, operator, measurement, reference, baseline in tasks:
            for start, init, strength in (("", None, 1.0), (" from the baseline", baseline, args.strength)):
                generator = torch.Generator().manual_seed(0)
                restored = sample(
                    network, shape, WINDOW, n=args.n, steps=args.steps, operator=operator,
                    measurement=measurement, generator=generator, init=init, strength=strength,
                )  # fmt: skip
                rows.append((task, f"guided{start}, {name} prior", *score(restored, reference)))
    size = " x ".join(map(str, shape))
    print(f"{args.n} held-out {dims}D images, {size} at {SPACING[dims]:g} mm, lung window; {args.steps} DDIM steps")
    print(f"{'task':<18} {'method':<42} {'PSNR dB':>8} {'SSIM':>6}")
    for task, method, psnr, ssim in sorted(rows, key=lambda r: r[0], reverse=True):
        print(f"{task:<18} {method:<42} {psnr:>8.2f} {ssim:>6.3f}")


if __name__ == "__main__":
    main()
