"""Direct, readable implementations of the intra-sample NT-Xent formulas, one anchor at a time.

Shared by the loss tests and ``benchmarks/loss.py`` as the straightforward implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def anchor_loss(views: list[torch.Tensor], anchor: int, positive: int, temperature: float) -> torch.Tensor:
    """-log( exp(s(a, p) / t) / sum_{k != a} exp(s(a, k) / t) ) with cosine similarity s."""
    a = views[anchor]
    numerator = torch.exp(F.cosine_similarity(a, views[positive], dim=0) / temperature)
    denominator = sum(
        torch.exp(F.cosine_similarity(a, views[k], dim=0) / temperature) for k in range(len(views)) if k != anchor
    )
    return -torch.log(numerator / denominator)


def reference_intra_sample_ntxent(z: torch.Tensor, temperature: float = 0.1, symmetric: bool = True) -> torch.Tensor:
    """The paper's L = 1/(2M) sum_m [l(m,1,2) + l(m,2,1)] per scan, averaged over scans (or view-1 anchors only)."""
    scan_losses = []
    for scan in z:
        patches = scan.shape[0]
        views = [scan[m, v] for v in range(2) for m in range(patches)]  # index v * M + m
        terms = []
        for m in range(patches):
            terms.append(anchor_loss(views, m, patches + m, temperature))
            if symmetric:
                terms.append(anchor_loss(views, patches + m, m, temperature))
        scan_losses.append(torch.stack(terms).mean())
    return torch.stack(scan_losses).mean()
