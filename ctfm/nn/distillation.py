"""The student side of embedding distillation: a small encoder and the projection onto the teacher's width."""

from __future__ import annotations

import torch
from torch import nn

from ctfm.nn.encoder import encoder_of, pooled_features


def embedding_width(model: nn.Module) -> int:
    """Channels of the deepest map (the pooled embedding's width) of a SegResEncoder or a model carrying one.

    Args:
        model: a CT-FM encoder or a network carrying one.

    Returns:
        ``init_filters * 2 ** (levels - 1)``: 512 for CT-FM.
    """
    encoder = encoder_of(model)
    return int(encoder.init_filters) * 2 ** (len(encoder.blocks_down) - 1)


class DistillationStudent(nn.Module):
    """A student encoder, plus a linear map onto the teacher's embedding width when the widths differ.

    ``student`` is exactly what ``ctfm export`` writes and ``ctfm.load`` reads back; the projection exists only
    for training.

    Args:
        student: the encoder being trained (e.g. ``ct_fm_encoder(init_filters=8)``).
        teacher: the frozen encoder it imitates; read only to size the projection and to check that both take
            the same input (spatial dims, channels). It is not stored.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module):
        super().__init__()
        student_encoder, teacher_encoder = encoder_of(student), encoder_of(teacher)
        for name in ("spatial_dims", "in_channels"):
            mine, theirs = getattr(student_encoder, name), getattr(teacher_encoder, name)
            if mine != theirs:
                raise ValueError(
                    f"the student's {name} is {mine} but the teacher's is {theirs}: they must read the same input"
                )
        self.student = student
        width, target = embedding_width(student), embedding_width(teacher)
        self.projection: nn.Module = nn.Identity() if width == target else nn.Linear(width, target)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The student's own pooled embedding (what users get after export)."""
        return pooled_features(self.student, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The student's embedding in the teacher's space."""
        return self.projection(self.embed(x))
