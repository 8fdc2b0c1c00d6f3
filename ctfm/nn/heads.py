"""Heads that sit on top of pooled CT-FM features."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR projection ``in -> hidden -> ReLU -> out`` (CT-FM: 512 -> 256 -> 128)."""

    def __init__(self, in_features: int = 512, hidden_features: int = 256, out_features: int = 128):
        super().__init__(
            nn.Linear(in_features, hidden_features), nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
        )


class ClassificationHead(ProjectionHead):
    """Scan-level classifier on pooled features ``in -> hidden -> ReLU -> classes`` (CT-FM triage: 512 -> 256 -> 1).

    The same two-layer shape as the projection head; one output is a binary logit.
    """

    def __init__(self, in_features: int = 512, hidden_features: int = 256, num_classes: int = 1):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (1 = binary with one logit), got {num_classes}")
        super().__init__(in_features, hidden_features, num_classes)
