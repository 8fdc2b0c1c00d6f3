"""Teacher-student distillation of a CT-FM encoder into a smaller one, as a Lighter module.

The teacher (any model ``ctfm.load`` reads) is frozen and kept out of ``network``, so the optimizer trains only the
student and its projection and the checkpoint's ``network.student`` exports like any encoder. Inputs are the
pretraining data module's strongly augmented views; the teacher sees exactly the input the student sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ctfm.nn.encoder import pooled_features
from ctfm.tasks.base import NONFINITE_PATIENCE, CTFMModule, expect_frozen_modules_in_eval


class EmbeddingDistillation(CTFMModule):
    """Regress the student's (projected) pooled embedding onto the frozen teacher's, view by view.

    The batch is the pretraining one: ``"views"`` of shape ``(scans, patches, 2, channels, z, y, x)``; every view
    is one training input.

    Args:
        network: the student (``ctfm.nn.DistillationStudent``), whose output regresses the teacher's.
        teacher: the frozen teacher encoder; kept in eval mode, never trained.
        criterion: the distillation loss of (student, teacher) embeddings.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        nonfinite_patience: non-finite losses in a row that stop the run (each one skips its step).
    """

    #: No validation data: without this Lightning warns about a validation_step it cannot run.
    validation_step = None

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module,
        criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        nonfinite_patience: int = NONFINITE_PATIENCE,
    ):
        super().__init__(
            network=network,
            criterion=criterion,
            optimizer=optimizer,
            scheduler=scheduler,
            nonfinite_patience=nonfinite_patience,
        )
        self.teacher = teacher.requires_grad_(False).eval()

    def setup(self, stage: str) -> None:
        expect_frozen_modules_in_eval()

    def train(self, mode: bool = True) -> EmbeddingDistillation:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        views = batch["views"]
        inputs = views.flatten(0, 2) if views.ndim == 7 else views
        with torch.no_grad():
            target = pooled_features(self.teacher, inputs)
        return self.criterion(self.network(inputs), target)
