"""Intra-sample SimCLR as a Lighter module: the training step of CT-FM pretraining."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ctfm.tasks.base import NONFINITE_PATIENCE, CTFMModule
from ctfm.transforms.device_views import DeviceViews


class IntraSampleSimCLR(CTFMModule):
    """Embeds every view of every scan in one batched forward pass, then applies the intra-sample loss.

    The batch is a dict whose ``"views"`` tensor has shape ``(scans, patches, 2, channels, z, y, x)``, as produced
    by :class:`ctfm.data.pretrain.CTPretrainDataModule`, or raw ``"patches"`` ``(scans, patches, 1, z, y, x)``
    (its ``views_on="device"``), which ``device_views`` turns into those views on the training device as soon as the
    batch arrives there (``on_after_batch_transfer``). The network maps ``(N, channels, z, y, x)`` to projections
    ``(N, dim)``; the criterion takes them back as ``(scans, patches, 2, dim)``.

    Args:
        channels_last: run the network in ``channels_last_3d`` memory format, which is faster for 3D convolutions
            under mixed precision on recent GPUs.
        scheduler_interval: ``"epoch"`` (the paper's warm-up cosine is counted in epochs) or ``"step"``.
        nonfinite_patience: non-finite losses in a row that stop the run (each one skips its step).
        device_views: makes the views of raw patches on the device; default: :class:`DeviceViews` with the worker
            pipeline's augmentation and seed 0 (recipes pass their seed). Its random stream depends on the seed,
            the DDP rank and the batch count, so ranks differ and a resumed run does not replay its first views.
        network: maps views ``(N, channels, z, y, x)`` to projections ``(N, dim)``.
        criterion: the intra-sample loss over ``(scans, patches, 2, dim)``.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
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
        device_views: DeviceViews | None = None,
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
        self.device_views = DeviceViews() if device_views is None else device_views
        self._view_batches = 0
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

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Lightning warns whenever a module with this hook meets a data module; the data module has none of its own.
        warnings.filterwarnings("ignore", message="You have overridden `on_after_batch_transfer` in `LightningModule`")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Raw patches -> views, for all views of the batch at once, on the device the batch now lives on."""
        if not isinstance(batch, dict) or "patches" not in batch:
            return batch
        batch = dict(batch)
        with torch.no_grad():
            batch["views"] = self.device_views(batch.pop("patches"), self.device_views.generator(*self._views_key()))
        return batch

    def _views_key(self) -> tuple[int, int]:
        """(rank, batch number): the batch count of the fit loop (restored on resume), or a local count without one."""
        self._view_batches += 1
        trainer = self._trainer
        if trainer is None:
            return 0, self._view_batches
        return trainer.global_rank, trainer.fit_loop.epoch_loop.batch_progress.total.ready

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        return self.contrastive_loss(batch["views"])

    def configure_optimizers(self) -> dict[str, Any]:
        config = super().configure_optimizers()
        if self.scheduler is not None:
            config["lr_scheduler"] = {"scheduler": self.scheduler, "interval": self.scheduler_interval}
        return config
