"""Training step time and peak memory of the diffusion presets in 2D and 3D, against MONAI's bare U-Net.

    PYTHONPATH=. python benchmarks/diffusion_step.py                       # CPU: tiny and small, 2D and 3D
    PYTHONPATH=. python benchmarks/diffusion_step.py --device cuda --presets lctfound --dims 2 \
        --size2d 256 256 --batch 36 --precision bf16                        # LCTfound-sized, one GPU

The straightforward implementation is MONAI's DiffusionModelUNet of the same size without conditioning; the ratio
is the cost of the window embedding and cross-attention that ctfm adds. Each step: noise, a random timestep, the
denoiser forward, epsilon MSE, backward, gradient clipping to 1.0 and an AdamW step.
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext

import torch
from _common import best_seconds, peak_rss_mib
from monai.networks.nets import DiffusionModelUNet

from ctfm.nn.diffusion import PRESETS, diffusion_unet


def bare_unet(spatial_dims: int, preset: str) -> DiffusionModelUNet:
    p = PRESETS[preset]
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        channels=p["channels"],
        attention_levels=p["attention_levels"],
        num_res_blocks=p["num_res_blocks"],
        num_head_channels=p["num_head_channels"],
        norm_num_groups=p["norm_num_groups"],
    )


def step_fn(network, conditioned: bool, shape, batch: int, device: str, precision: str):
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    images = torch.rand(batch, 1, *shape, device=device) * 2 - 1
    windows = torch.tensor([[1500.0, -500.0]] * batch, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def step():
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (batch,), device=device)
        with autocast:
            out = network(images + noise, t, windows) if conditioned else network(images + noise, t)
            loss = torch.nn.functional.mse_loss(out.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--dims", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--size2d", nargs=2, type=int, default=[64, 64])
    parser.add_argument("--size3d", nargs=3, type=int, default=[16, 32, 32])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("32", "bf16"), default="32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{'preset':<9} {'dims':>4} {'shape':>14} {'params':>11} {'ctfm s/step':>12} {'bare s/step':>12} {'ratio':>6}"
    )
    for preset in args.presets:
        for dims in args.dims:
            shape = tuple(args.size2d if dims == 2 else args.size3d)
            times = []
            for conditioned in (True, False):
                torch.manual_seed(0)
                network = (diffusion_unet(dims, preset) if conditioned else bare_unet(dims, preset)).to(args.device)
                step = step_fn(network, conditioned, shape, args.batch, args.device, args.precision)
                times.append(best_seconds(step, repeats=args.repeats))
                if conditioned:
                    params = sum(p.numel() for p in network.parameters())
            memory = (
                f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB GPU"
                if args.device == "cuda"
                else f"{peak_rss_mib():.0f} MiB RSS"
            )
            print(
                f"{preset:<9} {dims:>4} {'x'.join(map(str, shape)):>14} {params:>11,} {times[0]:>12.3f} "
                f"{times[1]:>12.3f} {times[0] / times[1]:>6.2f}  (peak {memory}, batch {args.batch})"
            )


if __name__ == "__main__":
    main()
