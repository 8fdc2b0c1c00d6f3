"""Intra-sample SimCLR as a Lighter module: the training step of CT-FM pretraining."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ctfm.tasks.base import NONFINITE_PATIENCE, CTFMModule


class IntraSampleSimCLR(CTFMModule):
    """Embeds every view of every scan in one batched forward pass, then applies the intra-sample loss.

    The batch is a dict whose ``"views"`` tensor has shape ``(scans, patches, 2, channels, z, y, x)``, as produced
    by :class:`ctfm.data.pretrain.CTPretrainDataModule`. The network maps ``(N, channels, z, y, x)`` to projections
    ``(N, dim)``; the criterion takes them back as ``(scans, patches, 2, dim)``.

    Args:
        channels_last: run the network in ``channels_last_3d`` memory format, which is faster for 3D convolutions
            under mixed precision on recent GPUs.
        scheduler_interval: ``"epoch"`` (the paper's warm-up cosine is counted in epochs) or ``"step"``.
        nonfinite_patience: non-finite losses in a row that stop the run (each one skips its step).
    """

    #: Pretraining has no validation data; without this Lightning warns about a validation_step it cannot run.
    validation_step = None

    def __init__(
        self,
        network: nn.Module,
        criterion: Callable[[torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        channels_last: bool = False,
        scheduler_interval: str = "epoch",
        nonfinite_patience: int = NONFINITE_PATIENCE,
    ):
        super().__init__(
            network=network,
            criterion=criterion,
            optimizer=optimizer,
            scheduler=scheduler,
            nonfinite_patience=nonfinite_patience,
        )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.channels_last = channels_last
        self.scheduler_interval = scheduler_interval
        if channels_last:
            self.network: nn.Module = network.to(memory_format=torch.channels_last_3d)

    def contrastive_loss(self, views: torch.Tensor) -> torch.Tensor:
        if views.ndim != 7 or views.shape[2] != 2:
            raise ValueError(f"expected views of shape (scans, patches, 2, C, z, y, x), got {tuple(views.shape)}")
        scans, patches = views.shape[:2]
        flat = views.flatten(0, 2)
        if self.channels_last:
            flat = flat.contiguous(memory_format=torch.channels_last_3d)
        projections = self.network(flat)
        return self.criterion(projections.view(scans, patches, 2, -1))

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.contrastive_loss(batch["views"])

    def configure_optimizers(self) -> dict[str, Any]:
        config = super().configure_optimizers()
        if self.scheduler is not None:
            config["lr_scheduler"] = {"scheduler": self.scheduler, "interval": self.scheduler_interval}
        return config
