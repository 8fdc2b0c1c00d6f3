"""Heads that sit on top of pooled CT-FM features."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR projection ``in -> hidden -> ReLU -> out`` (CT-FM: 512 -> 256 -> 128)."""

    def __init__(self, in_features: int = 512, hidden_features: int = 256, out_features: int = 128):
        super().__init__(
            nn.Linear(in_features, hidden_features), nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
        )
