"""Losses of label maps: DiceCE over every deep-supervision level, and cross-entropy + focal on class indices."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss, FocalLoss
from torch import nn


def deep_supervision_dice_ce() -> DeepSupervisionLoss:
    """DiceCE (softmax, one-hot targets) over every deep-supervision level, as the published recipes train.

    Returns:
        MONAI's ``DeepSupervisionLoss`` weighting the levels by ``exp`` (the finest most).
    """
    return DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weight_mode="exp")


class CrossEntropyFocalLoss(nn.Module):
    """Cross-entropy + ``focal_weight`` x focal loss (``monai.losses.FocalLoss``, softmax) on class-index targets.

    ``logits`` ``(N, K, ...)`` and ``targets`` ``(N, ...)`` of class indices, any number of trailing dimensions.

    Args:
        focal_weight: the focal term's weight.
        gamma: the focal loss's focusing exponent.
    """

    def __init__(self, focal_weight: float = 1.0, gamma: float = 2.0):
        super().__init__()
        self.cross_entropy = nn.CrossEntropyLoss()
        self.focal = FocalLoss(to_onehot_y=True, use_softmax=True, gamma=gamma)
        self.focal_weight = focal_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.long()
        return self.cross_entropy(logits, targets) + self.focal_weight * self.focal(logits, targets[:, None])
