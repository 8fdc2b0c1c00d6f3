"""DDPM pretraining (LCTfound) as a Lighter module, for 2D slices or 3D patches alike.

Epsilon prediction with MSE over MONAI's ``DDPMScheduler`` (1000 steps, linear betas 1e-4 to 2e-2) through
``DiffusionInferer``; the window condition is replaced by the null window with probability ``condition_dropout``
(LCTfound: 5%) so sampling can use classifier-free guidance; gradients are clipped to norm ``gradient_clip``;
``ema_decay`` keeps an exponential moving average of the weights in ``ema_network`` (saved in the checkpoint);
:func:`load_denoiser` reads either back.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from monai.inferers import DiffusionInferer
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ctfm.errors import CTFMError
from ctfm.nn.diffusion.network import NULL_WINDOW, WindowConditionedUNet
from ctfm.nn.diffusion.schedule import NUM_TRAIN_TIMESTEPS, ddpm_scheduler
from ctfm.tasks.base import NONFINITE_PATIENCE, CTFMModule, expect_frozen_modules_in_eval


class DDPMPretraining(CTFMModule):
    """Batches ``{"image": (B, 1, *spatial) in [-1, 1], "window": (B, 2) HU}`` -> noise-prediction MSE."""

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


#: The recipe ``vars`` that :func:`load_denoiser` reads back (as data) for sampling.
_SAMPLING_VARS = ("image_size", "spacing")


def load_denoiser(
    checkpoint: str | Path, spatial_dims: int | None = None, ema: bool = False
) -> tuple[WindowConditionedUNet, dict[str, Any]]:
    """The denoiser of a pretraining checkpoint (its EMA weights with ``ema``) and the recipe's ``vars``.

    The network is rebuilt from the config lighter saved in the checkpoint, read as data
    (:func:`ctfm.hub.safe_config.rebuild`); a checkpoint of another dimension than ``spatial_dims``, whose weights do
    not fit its own config or hold NaN or inf, is refused with one line before anything runs. Of ``vars`` only those
    sampling needs (image_size, spacing) are returned.
    """
    from ctfm.export import read_checkpoint
    from ctfm.hub.loading import refuse_nonfinite
    from ctfm.hub.safe_config import has_key, plain, rebuild, stored_config

    state = read_checkpoint(checkpoint)
    config = stored_config(state, str(checkpoint))
    network = rebuild(config, "model::network", source=str(checkpoint)) if has_key(config, "model::network") else None
    if not isinstance(network, WindowConditionedUNet):
        raise CTFMError(f"{checkpoint}: model::network is not a diffusion denoiser (ctfm.nn.diffusion)")
    prefix = "ema_network.module." if ema else "network."
    weights = {k[len(prefix) :]: v for k, v in (state.get("state_dict") or {}).items() if k.startswith(prefix)}
    if not weights:
        hint = " (trained without vars::ema_decay)" if ema else ""
        raise CTFMError(f"{checkpoint}: no weights under {prefix!r}{hint}")
    refuse_nonfinite(weights, source=str(checkpoint))
    stored_dims = weights["unet.conv_in.conv.weight"].ndim - 2
    if spatial_dims is not None and stored_dims != spatial_dims:
        raise CTFMError(f"{checkpoint}: holds a {stored_dims}D denoiser, but spatial_dims is {spatial_dims}")
    if stored_dims != network.spatial_dims:
        raise CTFMError(
            f"{checkpoint}: its weights are {stored_dims}D but its config builds a {network.spatial_dims}D net"
        )
    missing, unexpected = network.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CTFMError(
            f"{checkpoint}: weights do not match the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    variables = {
        name: plain(config, f"vars::{name}", source=str(checkpoint))
        for name in _SAMPLING_VARS
        if has_key(config, f"vars::{name}")
    }
    return network.eval(), {name: value for name, value in variables.items() if value is not None}
