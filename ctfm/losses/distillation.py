"""Embedding distillation loss: mean squared error to the teacher's embedding, plus cosine.

The mean squared error is the distillation loss of J. Kim's proposal "Leveraging Foundation Models, Knowledge
Distillation, and Pseudo-Labeling for Robust Lung Segmentation in Computed Tomography Scans" (UCLA), where a student
image encoder learns MedSAM's embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EmbeddingDistillationLoss(nn.Module):
    """``MSE(student, teacher) + cosine_weight * (1 - cos(student, teacher))``, averaged over the batch.

    ``forward(student, teacher)`` takes two ``(batch, dim)`` embeddings in the teacher's space (the student's after
    :class:`~ctfm.nn.DistillationStudent`'s projection) and returns the scalar loss, computed in float32.

    Args:
        cosine_weight: weight of the cosine term; 0 (the default, plain MSE as in the proposal) leaves it out.
            It makes the direction count when the teacher's embedding norms vary a lot between inputs.

    Examples:
        >>> import torch
        >>> from ctfm.losses import EmbeddingDistillationLoss
        >>> loss, teacher = EmbeddingDistillationLoss(), torch.ones(4, 512)
        >>> float(loss(teacher, teacher)), float(loss(torch.zeros(4, 512), teacher))
        (0.0, 1.0)
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
