"""Embedding distillation loss: mean squared error to the teacher's embedding (seed 004, Eq. 2), plus cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingDistillationLoss(nn.Module):
    """``MSE(student, teacher) + cosine_weight * (1 - cos(student, teacher))``, averaged over the batch.

    Both inputs are ``(batch, dim)`` embeddings in the teacher's space. The cosine term (off by default, as in the
    seed) makes the direction count when the teacher's embedding norms vary a lot between inputs.
    """

    def __init__(self, cosine_weight: float = 0.0):
        super().__init__()
        if cosine_weight < 0:
            raise ValueError(f"cosine_weight must be >= 0, got {cosine_weight}")
        self.cosine_weight = float(cosine_weight)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape:
            raise ValueError(f"student embeddings {tuple(student.shape)} and teacher's {tuple(teacher.shape)} differ")
        loss = F.mse_loss(student.float(), teacher.float())
        if self.cosine_weight:
            loss = loss + self.cosine_weight * (1.0 - F.cosine_similarity(student.float(), teacher.float()).mean())
        return loss
