"""The encoder + projection head pair trained by SimCLR."""

from __future__ import annotations

import torch
from torch import nn

from ctfm.nn.encoder import pooled_features


class ContrastiveNetwork(nn.Module):
    """Encoder, global average pool, projection head.

    Kept as one module so an optimizer built from ``network.parameters()`` trains the head too, while
    ``network.encoder`` is exactly what gets exported and loaded by ``ctfm.load``.

    Args:
        encoder: the CT-FM encoder (``ct_fm_encoder()``).
        head: maps pooled features ``(B, channels)`` to the loss's space, e.g. :class:`ProjectionHead`.
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features (the embedding users get), shape ``(batch, channels)``."""
        return pooled_features(self.encoder, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
