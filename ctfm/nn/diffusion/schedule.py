"""The DDPM noise schedule that training and every sampler share (Ho et al., as LCTfound)."""

from __future__ import annotations

from monai.networks.schedulers import DDPMScheduler

NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 2e-2


def ddpm_scheduler(num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> DDPMScheduler:
    """The training noise schedule: linear betas 1e-4 to 2e-2 over ``num_train_timesteps``."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, schedule="linear_beta", beta_start=BETA_START, beta_end=BETA_END
    )
