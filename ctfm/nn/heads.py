"""Heads that sit on top of pooled CT-FM features."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """SimCLR projection ``in -> hidden -> ReLU -> out`` (CT-FM: 512 -> 256 -> 128).

    The contrastive loss is computed on its output; the embedding users get is its input.

    Args:
        in_features: width of the pooled encoder features.
        hidden_features: width of the hidden layer.
        out_features: width of the space the contrastive loss compares in.
    """

    def __init__(self, in_features: int = 512, hidden_features: int = 256, out_features: int = 128):
        super().__init__(
            nn.Linear(in_features, hidden_features), nn.ReLU(inplace=True), nn.Linear(hidden_features, out_features)
        )


class ClassificationHead(ProjectionHead):
    """Scan-level classifier on pooled features ``in -> hidden -> ReLU -> classes`` (CT-FM triage: 512 -> 256 -> 1).

    The same two-layer shape as the projection head; one output is a binary logit.

    Args:
        in_features: width of the pooled encoder features.
        hidden_features: width of the hidden layer.
        num_classes: 1 for a binary task (one logit), else the number of classes.
    """

    def __init__(self, in_features: int = 512, hidden_features: int = 256, num_classes: int = 1):
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (1 = binary with one logit), got {num_classes}")
        super().__init__(in_features, hidden_features, num_classes)
