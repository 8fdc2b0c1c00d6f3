"""``ctfm diffusion sample``: images at a CT window from a diffusion pretraining checkpoint, as NIfTI and a PNG."""

from __future__ import annotations

import argparse

from ctfm.outputs import OVERWRITE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("diffusion", help="sample from a diffusion pretraining checkpoint (LCTfound)")
    commands = parser.add_subparsers(dest="diffusion_command", metavar="COMMAND", required=True)
    sample = commands.add_parser("sample", help="draw images at a window; NIfTI (HU) per image and a PNG grid")
    sample.add_argument("checkpoint", help="checkpoint written by lighter_configs/diffusion/pretrain_{2d,3d}.yaml")
    sample.add_argument(
        "--window", nargs=2, type=float, metavar=("WIDTH", "LEVEL"), help="HU, e.g. 1500 -500 (default: none)"
    )
    sample.add_argument("--text", help="a caption, for a checkpoint trained with vars::text_encoder (default: none)")
    sample.add_argument("--n", type=int, default=4, help="images to draw (default 4)")
    sample.add_argument("--steps", type=int, default=50, help="reverse steps (default 50; ddpm walks all 1000)")
    sample.add_argument("--method", choices=("ddim", "ddpm"), default="ddim")
    sample.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1 = none)")
    sample.add_argument("--size", nargs="+", type=int, help="image size (default: the recipe's vars::image_size)")
    sample.add_argument("--spatial-dims", type=int, choices=(2, 3), help="refuse a checkpoint of another dimension")
    sample.add_argument("--ema", action="store_true", help="use the EMA weights")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--out", required=True, help="folder for sample_000.nii.gz ... and samples.png")
    sample.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    sample.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from ctfm.analysis.diffusion import sample_to_folder

    written = sample_to_folder(
        args.checkpoint,
        args.out,
        window=args.window,
        text=args.text,
        n=args.n,
        steps=args.steps,
        method=args.method,
        guidance_scale=args.guidance,
        size=args.size,
        spatial_dims=args.spatial_dims,
        ema=args.ema,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(f"wrote {len(written) - 1} images and {written[-1]} to {args.out}")
    return 0
