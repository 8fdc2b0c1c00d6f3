"""Intra-sample NT-Xent: the CT-FM contrastive objective.

Negatives come only from the same scan, so a view must tell its own patch apart from other anatomy of the same
body instead of from other people's scans. Each scan's loss is independent of the others, which is why nothing has
to be gathered across GPUs under DDP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IntraSampleNTXentLoss(nn.Module):
    """NT-Xent computed separately inside each scan of the batch.

    Args:
        temperature: softmax temperature applied to cosine similarities (CT-FM: 0.1).
        symmetric: ``True`` is the paper's form: both views of every patch anchor once,
            ``L = 1/(2M) sum_m [l(m,1,2) + l(m,2,1)]``, averaged over scans. ``False`` is the released code's form:
            only the first view anchors; its denominator holds its positive and both views of the other patches.

    ``forward(z)`` takes projections ``z`` of shape ``(scans, patches, 2, dim)`` (not yet normalised) and returns
    the scalar loss, computed in float32 even under mixed precision. Every scan needs at least two patches, or there
    is no negative to contrast with.

    Examples:
        >>> import torch
        >>> from ctfm.losses import IntraSampleNTXentLoss
        >>> _ = torch.manual_seed(0)
        >>> z = torch.randn(2, 8, 1, 128).expand(2, 8, 2, 128)  # 2 scans, 8 patches, two identical views
        >>> float(IntraSampleNTXentLoss()(z)) < float(IntraSampleNTXentLoss()(torch.randn(2, 8, 2, 128)))
        True
    """

    def __init__(self, temperature: float = 0.1, symmetric: bool = True):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.symmetric = symmetric

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[2] != 2:
            raise ValueError(f"expected projections of shape (scans, patches, 2, dim), got {tuple(z.shape)}")
        if z.shape[1] < 2:
            raise ValueError(f"intra-sample NT-Xent needs at least 2 patches per scan, got {z.shape[1]}")
        # Under mixed precision the similarity matmul would otherwise run in bf16/fp16, whose 8-bit mantissa
        # blurs cosine similarities that differ in the third decimal, ten times over at temperature 0.1.
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._loss(z.float())

    def _loss(self, z: torch.Tensor) -> torch.Tensor:
        scans, patches, _, dim = z.shape
        # Rows 0..M-1 are the first views, rows M..2M-1 the second views, so view i's positive is row (i + M) % 2M.
        views = F.normalize(z, dim=-1).transpose(1, 2).reshape(scans, 2 * patches, dim)
        logits = views @ views.transpose(1, 2) / self.temperature
        eye = torch.eye(2 * patches, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(eye, float("-inf"))
        positives = (torch.arange(2 * patches, device=z.device) + patches) % (2 * patches)
        anchors = 2 * patches if self.symmetric else patches
        per_view = F.cross_entropy(
            logits[:, :anchors].reshape(scans * anchors, 2 * patches),
            positives[:anchors].repeat(scans),
            reduction="none",
        )
        # Every scan contributes the same number of anchors, so the mean over views then scans is the plain mean.
        return per_view.mean()
