"""Vectorised intra-sample NT-Xent against a per-scan, per-patch loop at the paper's batch size.

python benchmarks/loss.py [--scans 16 --patches 20 --dim 128]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import best_seconds

from ctfm.losses import IntraSampleNTXentLoss


def looped_loss(z: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The straightforward port of the formula: a Python loop over scans and patches, one anchor row at a time."""
    scan_losses = []
    for scan in z:
        patches = scan.shape[0]
        views = F.normalize(torch.cat([scan[:, 0], scan[:, 1]]), dim=-1)
        terms = []
        for m in range(patches):
            for anchor, positive in ((m, patches + m), (patches + m, m)):
                logits = views @ views[anchor] / temperature
                others = torch.cat([logits[:anchor], logits[anchor + 1 :]])
                terms.append(torch.logsumexp(others, dim=0) - logits[positive])
        scan_losses.append(torch.stack(terms).mean())
    return torch.stack(scan_losses).mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=16)
    parser.add_argument("--patches", type=int, default=20)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()

    z = torch.randn(args.scans, args.patches, 2, args.dim, requires_grad=True)
    loss_fn = IntraSampleNTXentLoss(temperature=0.1)

    def vectorised() -> None:
        loss_fn(z).backward()

    def loop() -> None:
        looped_loss(z).backward()

    fast, slow = loss_fn(z).item(), looped_loss(z).item()
    assert abs(fast - slow) < 1e-4 * max(1.0, abs(slow)), (fast, slow)
    t_fast = best_seconds(vectorised, repeats=20)
    t_slow = best_seconds(loop, repeats=5)
    print(f"batch: {args.scans} scans x {args.patches} patches x 2 views x {args.dim}-d; loss {fast:.5f} == {slow:.5f}")
    print(f"vectorised forward+backward: {t_fast * 1e3:8.2f} ms")
    print(f"per-scan, per-patch loop:    {t_slow * 1e3:8.2f} ms")
    print(f"speed-up: {t_slow / t_fast:.0f}x")


if __name__ == "__main__":
    main()
