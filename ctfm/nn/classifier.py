"""A whole-scan classifier: the CT-FM encoder, global average pooling of its deepest map, a small head."""

from __future__ import annotations

from typing import cast

import torch
from monai.networks.nets.segresnet_ds import SegResEncoder
from torch import nn

from ctfm.nn.encoder import pooled_features
from ctfm.nn.heads import ClassificationHead


class ScanClassifier(nn.Module):
    """``(B, 1, z, y, x)`` -> logits ``(B, num_classes)``; the encoder sits at ``.encoder`` so fine-tuning finds it.

    Args:
        encoder: a SegResEncoder (``ctfm.nn.ct_fm_encoder``); its deepest map has ``in_features`` channels.
        num_classes: 1 for a binary task (one logit), else the number of classes.
        in_features: the encoder's embedding width (512 for CT-FM).
        hidden_features: width of the head's hidden layer.
    """

    def __init__(
        self, encoder: SegResEncoder, num_classes: int = 1, in_features: int = 512, hidden_features: int = 256
    ):
        super().__init__()
        self.encoder = encoder
        self.head = ClassificationHead(in_features, hidden_features, num_classes)

    @property
    def num_classes(self) -> int:
        return cast(nn.Linear, self.head[-1]).out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.encoder, x))
