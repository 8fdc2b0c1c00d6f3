"""DDPM pretraining (LCTfound) as a Lighter module, for 2D slices or 3D patches alike.

Epsilon prediction with MSE over MONAI's ``DDPMScheduler`` (1000 steps, linear betas 1e-4 to 2e-2) through
``DiffusionInferer``; the window condition is replaced by the null window with probability ``condition_dropout``
(LCTfound: 5%) so sampling can use classifier-free guidance; gradients are clipped to norm ``gradient_clip``;
``ema_decay`` keeps an exponential moving average of the weights in ``ema_network`` (saved in the checkpoint);
:func:`ctfm.hub.checkpoint.load_denoiser` reads either back.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from monai.inferers import DiffusionInferer
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ctfm.nn.diffusion.network import NULL_WINDOW
from ctfm.nn.diffusion.schedule import NUM_TRAIN_TIMESTEPS, ddpm_scheduler
from ctfm.tasks.base import NONFINITE_PATIENCE, CTFMModule, expect_frozen_modules_in_eval


class DDPMPretraining(CTFMModule):
    """Batches ``{"image": (B, 1, *spatial) in [-1, 1], "window": (B, 2) HU}`` -> noise-prediction MSE.

    Args:
        network: a window-conditioned denoiser (``ctfm.nn.diffusion.diffusion_unet``), 2D or 3D.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        num_train_timesteps: the noise schedule's steps (LCTfound: 1000).
        condition_dropout: probability that a row's window (and caption) is replaced by the null condition.
        gradient_clip: gradient norm clip; None or 0 does not clip.
        ema_decay: keeps an exponential moving average of the weights in ``ema_network``; None keeps none.
        scheduler_interval: ``"epoch"`` or ``"step"``, how often the scheduler steps.
        nonfinite_patience: non-finite losses in a row that stop the run (each one skips its step).
    """

    validation_step = None  # pretraining has no validation data

    def __init__(
        self,
        network: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
        condition_dropout: float = 0.05,
        gradient_clip: float | None = 1.0,
        ema_decay: float | None = None,
        scheduler_interval: str = "epoch",
        nonfinite_patience: int = NONFINITE_PATIENCE,
    ):
        super().__init__(
            network=network,
            criterion=nn.MSELoss(),
            optimizer=optimizer,
            scheduler=scheduler,
            nonfinite_patience=nonfinite_patience,
        )
        if not 0.0 <= condition_dropout < 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1), got {condition_dropout}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if getattr(network, "text_encoder", None) is not None:
            expect_frozen_modules_in_eval()  # the text encoder is frozen in eval mode on purpose
        self.noise_scheduler = ddpm_scheduler(num_train_timesteps)
        self.inferer = DiffusionInferer(self.noise_scheduler)
        self.condition_dropout = condition_dropout
        self.gradient_clip = gradient_clip
        self.scheduler_interval = scheduler_interval
        self.ema_network = (
            AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
            if ema_decay is not None
            else None
        )

    def drop_conditions(
        self, windows: torch.Tensor, texts: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, list[str] | None]:
        """``windows`` (and captions) with each row replaced by the null window (and the empty caption) with
        probability ``condition_dropout``: one draw per row drops both, as unconditional sampling feeds both."""
        drop = torch.rand(windows.shape[0], device=windows.device) < self.condition_dropout
        windows = torch.where(drop[:, None], torch.full_like(windows, NULL_WINDOW), windows)
        if texts is not None:
            texts = ["" if dropped else str(text) for dropped, text in zip(drop.tolist(), texts)]
        return windows, texts

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        images, windows = batch["image"], batch["window"]
        expected = 2 + self.network.spatial_dims
        if images.ndim != expected:
            raise ValueError(
                f"the network is {self.network.spatial_dims}D and expects images (B, C, *spatial) of {expected} "
                f"dimensions, got shape {tuple(images.shape)}"
            )
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, self.noise_scheduler.num_train_timesteps, (images.shape[0],), device=images.device)
        windows, texts = self.drop_conditions(windows.to(images.dtype), batch.get("text"))
        network = partial(self.network, texts=texts) if texts is not None else self.network
        # MONAI annotates the model as DiffusionModelUNet but only calls it: any module with its forward will do
        prediction = self.inferer(images, network, noise, timesteps, condition=windows[:, None, :])  # type: ignore[arg-type]
        return self.criterion(prediction.float(), noise.float())

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = self.gradient_clip if gradient_clip_val is None else gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if outputs is not None and self.ema_network is not None:
            self.ema_network.update_parameters(self.network)

    def configure_optimizers(self) -> dict[str, Any]:
        config = super().configure_optimizers()
        if self.scheduler is not None:
            config["lr_scheduler"] = {"scheduler": self.scheduler, "interval": self.scheduler_interval}
        return config
