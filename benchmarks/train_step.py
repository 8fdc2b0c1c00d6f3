"""Seconds per SimCLR optimisation step: all views in one batched forward vs one forward per patch.

    python benchmarks/train_step.py                          # CPU-sized default
    python benchmarks/train_step.py --device cuda --init-filters 32 --patch 24 128 128 \
        --scans 4 --patches 20 --precision bf16 --channels-last   # the paper's per-GPU batch

The per-patch pattern sends each patch's two views through the encoder on their own, as a straightforward port
would; it computes the same loss function (BatchNorm statistics come from 2 views instead of the whole batch).
The batched step is what ``IntraSampleSimCLR`` does. Each pattern runs in its own process, so peak memory is its
own. On CUDA it also prints the model FLOP utilisation (forward + backward = 3x the forward FLOPs, counted with
torch's FLOP counter).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import nullcontext

import torch
from _common import peak_rss_mib

from ctfm.losses import IntraSampleNTXentLoss
from ctfm.nn import ContrastiveNetwork, ProjectionHead, ct_fm_encoder

#: Dense bf16 peak of the GPUs this was measured on, for MFU (H100 SXM ~989 TFLOP/s).
PEAK_TFLOPS = {"NVIDIA H100": 989.0, "NVIDIA H200": 989.0}


def build(init_filters: int, device: str, channels_last: bool) -> tuple[ContrastiveNetwork, torch.optim.Optimizer]:
    torch.manual_seed(0)
    network = ContrastiveNetwork(ct_fm_encoder(init_filters=init_filters), ProjectionHead(init_filters * 16)).to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last_3d)
    return network, torch.optim.AdamW(network.parameters(), lr=1e-4, weight_decay=1e-6)


def batched_step(network, views, loss_fn, channels_last: bool) -> torch.Tensor:
    scans, patches = views.shape[:2]
    flat = views.flatten(0, 2)
    if channels_last:
        flat = flat.contiguous(memory_format=torch.channels_last_3d)
    return loss_fn(network(flat).view(scans, patches, 2, -1))


def per_patch_step(network, views, loss_fn, channels_last: bool) -> torch.Tensor:
    projections = [[network(views[s, m]) for m in range(views.shape[1])] for s in range(views.shape[0])]
    return loss_fn(torch.stack([torch.stack(row) for row in projections]))


def time_steps(step, network, optimizer, views, loss_fn, args, autocast) -> float:
    def one() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = step(network, views, loss_fn, args.channels_last)
        loss.backward()
        optimizer.step()

    one()
    synchronize(args.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        one()
    synchronize(args.device)
    return (time.perf_counter() - start) / args.steps


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_flops(network, views, channels_last: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(views[:1, :1].flatten(0, 2))
    return counter.get_total_flops() / 2 * views.shape[0] * views.shape[1] * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--init-filters", type=int, default=8)
    parser.add_argument("--patch", type=int, nargs=3, default=[16, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--scans", type=int, default=2)
    parser.add_argument("--patches", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--worker", choices=["batched", "per-patch"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    views = torch.rand(args.scans, args.patches, 2, 1, *args.patch, device=args.device)
    loss_fn = IntraSampleNTXentLoss()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    autocast = (lambda: torch.autocast(args.device.split(":")[0], dtype=dtype)) if dtype else nullcontext

    if args.worker:
        step = batched_step if args.worker == "batched" else per_patch_step
        network, optimizer = build(args.init_filters, args.device, args.channels_last)
        seconds = time_steps(step, network, optimizer, views, loss_fn, args, autocast)
        cuda = args.device.startswith("cuda")
        memory = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
        flops = 3 * forward_flops(network, views, args.channels_last) if cuda else 0.0
        print(json.dumps({"seconds": seconds, "memory_mib": memory, "flops": flops}))
        return

    results = {}
    for name in ("batched", "per-patch"):
        command = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
        results[name] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        where = "GPU" if args.device.startswith("cuda") else "RSS"
        print(
            f"{name:9s} step: {results[name]['seconds']:8.3f} s   peak {where} {results[name]['memory_mib']:8.0f} MiB"
        )
    batched, per_patch = results["batched"]["seconds"], results["per-patch"]["seconds"]
    views_per_step = args.scans * args.patches * 2
    print(
        f"size: init_filters {args.init_filters}, patch {'x'.join(map(str, args.patch))}, {args.scans} scans x "
        f"{args.patches} patches x 2 views = {views_per_step} views/step, {args.precision}"
        f"{', channels-last' if args.channels_last else ''}, device {args.device}"
    )
    print(f"batched: {views_per_step / batched:.1f} views/s; per-patch / batched time: {per_patch / batched:.2f}x")
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if name.startswith(k)), None)
        achieved = results["batched"]["flops"] / batched / 1e12
        print(
            f"achieved {achieved:.1f} TFLOP/s on {name}"
            + (f", MFU {achieved / peak:.1%} of {peak:.0f}" if peak else "")
        )


if __name__ == "__main__":
    main()
