"""Low-dose enhancement by cold diffusion (Bansal et al. 2023, as LCTfound via CoreDiff), in 2D or 3D alike.

The degradation walks from the full-dose image (t = 0) to the low-dose one (t = T) with no noise added:
``D(x_full, t) = a_t x_full + (1 - a_t) x_low``, ``a_t = 1 - t / T``. The denoiser (a preset of
:mod:`ctfm.nn.diffusion`, conditioned on the window the images are in) restores ``x_full`` from ``x_t`` as a residual
``x0 = x_t + net(x_t, t)`` (so an untrained net returns its input) with an L1 loss. Restoration runs the improved
cold-diffusion sampler from ``x_T = x_low``: ``x_{t-1} = x_t - D(x0, t) + D(x0, t - 1)``. Validation and test
restore every held-out pair and score it, and its low-dose input, on the HU scale
(:func:`ctfm.image_quality.restoration_metrics`: PSNR, SSIM, RMSE over [-1024, 2048] HU); the means are logged
and each case is written to ``<output_dir>/<stage>_cases.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError
from ctfm.image_quality import METRICS, restoration_metrics
from ctfm.nn.diffusion.network import WindowConditionedUNet
from ctfm.nn.diffusion.schedule import NUM_TRAIN_TIMESTEPS
from ctfm.tasks.base import NONFINITE_PATIENCE, CTFMModule
from ctfm.transforms.width_level import remove_window


class ColdDiffusion(CTFMModule):
    """Batches ``{"image": full dose, "low_dose": (B, 1, *spatial) in [-1, 1], "window": (B, 2) HU}``.

    Args:
        network: a window-conditioned denoiser (``ctfm.nn.diffusion.diffusion_unet``), 2D or 3D.
        steps: T, the number of degradation steps (CoreDiff: 10).
        pretrained: a DDPM pretraining checkpoint whose denoiser weights start the network (LCTfound fine-tunes
            its pretrained model) except the output layer, zeroed so that training starts from the identity; it
            must be of the network's dimension and preset.
        output_dir: per-case metrics go to ``<output_dir>/<stage>_cases.csv``.
        optimizer: the optimizer (recipes build it with the network's parameters).
        scheduler: a learning-rate scheduler, or None.
        gradient_clip: gradient norm clip; None or 0 does not clip.
        nonfinite_patience: non-finite losses in a row that stop the run (each one skips its step).
    """

    def __init__(
        self,
        network: WindowConditionedUNet,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        steps: int = 10,
        pretrained: str | Path | None = None,
        output_dir: str | Path | None = None,
        gradient_clip: float | None = 1.0,
        nonfinite_patience: int = NONFINITE_PATIENCE,
    ):
        super().__init__(
            network=network,
            criterion=nn.L1Loss(),
            optimizer=optimizer,
            scheduler=scheduler,
            nonfinite_patience=nonfinite_patience,
        )
        if steps < 1:
            raise CTFMError(f"cold diffusion needs at least one step, got steps={steps}")
        self.steps = int(steps)
        self.gradient_clip = gradient_clip
        self.output_dir = None if output_dir is None else Path(output_dir)
        if pretrained is not None:
            self._load_pretrained(pretrained)
        self.case_rows: list[dict[str, Any]] = []

    def _load_pretrained(self, checkpoint: str | Path) -> None:
        from ctfm.hub.checkpoint import load_denoiser

        prior, _ = load_denoiser(checkpoint, spatial_dims=self.network.spatial_dims)
        try:
            self.network.load_state_dict(prior.state_dict())
        except RuntimeError as err:
            detail = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
            raise CTFMError(f"{checkpoint}: its denoiser is another preset than this network's ({detail})") from None
        # The prior's output layer predicts noise; read as a residual it would corrupt every image at the start.
        # Zeroed, as MONAI initialises it, the restoration starts at the identity on the prior's features.
        output = self.network.unet.out[-1]
        for parameter in output.parameters():
            torch.nn.init.zeros_(parameter)

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``a_t = 1 - t / T``: 1 at full dose (t = 0), 0 at low dose (t = T)."""
        return 1.0 - t.float() / self.steps

    def degrade(self, full: torch.Tensor, low: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``D(full, t) = a_t full + (1 - a_t) low`` for a ``(B,)`` tensor of steps ``t`` in [0, T]."""
        a = self.alpha(t).to(full.dtype).reshape(-1, *[1] * (full.ndim - 1))
        return a * full + (1 - a) * low

    def restore_step(self, x: torch.Tensor, t: torch.Tensor, windows: torch.Tensor | None) -> torch.Tensor:
        """The network's full-dose estimate x0 from ``x_t`` (a residual on ``x_t``)."""
        timesteps = (t * (NUM_TRAIN_TIMESTEPS - 1)) // self.steps  # the pretraining's timestep scale
        return x + self.network(x, timesteps.long(), windows)

    def _check(self, images: torch.Tensor) -> None:
        expected = 2 + self.network.spatial_dims
        if images.ndim != expected:
            raise CTFMError(
                f"the network is {self.network.spatial_dims}D and expects images (B, C, *spatial) of {expected} "
                f"dimensions, got shape {tuple(images.shape)}"
            )

    def compute_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        full, low = batch["image"], batch["low_dose"]
        self._check(full)
        t = torch.randint(1, self.steps + 1, (full.shape[0],), device=full.device)
        estimate = self.restore_step(self.degrade(full, low, t), t, batch.get("window"))
        return self.criterion(estimate.float(), full.float())

    @torch.no_grad()
    def restore(self, low: torch.Tensor, windows: torch.Tensor | None = None) -> torch.Tensor:
        """Full-dose estimates of ``low`` by the improved cold-diffusion sampler, T steps from ``x_T = low``."""
        self._check(low)
        x = low
        for step in range(self.steps, 0, -1):
            t = torch.full((low.shape[0],), step, device=low.device, dtype=torch.long)
            x0 = self.restore_step(x, t, windows).clamp(-1, 1)
            x = x - self.degrade(x0, low, t) + self.degrade(x0, low, t - 1)
        return x.clamp(-1, 1)

    def _evaluate(self, batch: dict[str, Any]) -> dict[str, Any]:
        self._batch_size = self.batch_size_of(batch)
        full, low, windows = batch["image"], batch["low_dose"], batch["window"]
        restored = self.restore(low, windows)
        loss = self.criterion(restored.float(), full.float())
        full_hu, low_hu, restored_hu = (_to_hu(x, windows) for x in (full, low, restored))
        before = restoration_metrics(low_hu, full_hu)
        after = restoration_metrics(restored_hu, full_hu)
        cases = batch.get("case") or [str(i) for i in range(len(full))]
        for index, case in enumerate(cases):
            row: dict[str, Any] = {"case": case}
            row.update({f"{name}_low_dose": float(before[name][index]) for name in METRICS})
            row.update({f"{name}_restored": float(after[name][index]) for name in METRICS})
            self.case_rows.append(row)
        return {"loss": loss, "pred": restored}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self._evaluate(batch)

    def _finish(self, stage: str) -> None:
        """Log the means over the held-out pairs and write ``<output_dir>/<stage>_cases.csv`` (a last ``mean`` row)."""
        rows, self.case_rows = self.case_rows, []
        if not rows:
            return
        import pandas as pd

        frame = pd.DataFrame(rows)
        means = frame.drop(columns="case").mean()
        for name, value in means.items():
            self.log(f"{stage}/{name}", float(value), on_epoch=True, batch_size=1, sync_dist=True)
        if self.output_dir is None or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        frame = pd.concat([frame, pd.DataFrame([{"case": "mean", **means.to_dict()}])], ignore_index=True)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(self.output_dir / f"{stage}_cases.csv", lambda tmp: frame.to_csv(tmp, index=False))

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def configure_optimizers(self) -> dict[str, Any]:
        config = super().configure_optimizers()
        if self.scheduler is not None:  # the warm-up cosine is counted in optimizer steps
            config["lr_scheduler"] = {"scheduler": self.scheduler, "interval": "step"}
        return config

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        clip = self.gradient_clip if gradient_clip_val is None else gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")


def _to_hu(images: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Each image of ``(B, C, *spatial)`` from [-1, 1] back to HU by its own window."""
    return torch.stack([remove_window(image, *w.tolist()) for image, w in zip(images, windows.float(), strict=True)])
