"""Reverse diffusion with classifier-free guidance and an optional data-consistency step, in 2D or 3D.

Every reverse step predicts the noise (guided: ``null + scale * (cond - null)``, the null window being the one
training dropped to), forms the clean estimate x0, clips it to [-1, 1] and, for restoration, replaces it by its
data-consistent version ``operator.project(x0, measurement)``; the noise is then re-derived from that x0 and MONAI's
scheduler takes the step. At the last step x0 is the output, so the output satisfies the operator's constraint
(exactly for down-sampling; up to the projector's iterations for sparse views).

A restoration may start from a first guess (bicubic up-sampling, filtered back-projection) instead of pure noise:
``init`` is noised to the timestep ``strength`` of the way up the schedule and only the steps below it are walked
("come closer, diffuse faster", Chung et al., CVPR 2022). The guess then fixes the coarse content and the prior
and the data-consistency step refine it, in fewer steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from tqdm.auto import tqdm

from ctfm.errors import CTFMError
from ctfm.nn.diffusion.network import NULL_WINDOW, WindowConditionedUNet
from ctfm.nn.diffusion.operators import LinearOperator
from ctfm.nn.diffusion.schedule import BETA_END, BETA_START, NUM_TRAIN_TIMESTEPS
from ctfm.transforms.window import check_window

METHODS = ("ddim", "ddpm")


def sampling_scheduler(method: str, steps: int) -> DDIMScheduler | DDPMScheduler:
    """The training schedule walked backwards: DDIM in ``steps`` steps, or DDPM over all 1000."""
    kind: type[DDIMScheduler] | type[DDPMScheduler]
    if method == "ddim":
        kind = DDIMScheduler
    elif method == "ddpm":
        if steps != NUM_TRAIN_TIMESTEPS:
            raise CTFMError(f"DDPM sampling walks all {NUM_TRAIN_TIMESTEPS} steps (got {steps}); use ddim for fewer")
        kind = DDPMScheduler
    else:
        raise CTFMError(f"unknown sampling method {method!r}; known: {', '.join(METHODS)}")
    scheduler = kind(NUM_TRAIN_TIMESTEPS, "linear_beta", clip_sample=False, beta_start=BETA_START, beta_end=BETA_END)
    scheduler.set_timesteps(steps)
    return scheduler


@torch.no_grad()
def sample(
    network: WindowConditionedUNet,
    shape: Sequence[int],
    window: Sequence[float] | None = None,
    *,
    n: int = 1,
    steps: int = 50,
    method: str = "ddim",
    guidance_scale: float = 1.0,
    operator: LinearOperator | None = None,
    measurement: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    text: str | None = None,
    init: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """``n`` images ``(n, 1, *shape)`` in [-1, 1] at ``window`` (None: unconditional), optionally restored.

    ``text`` is a caption for a denoiser built with a text encoder; guidance then extrapolates from the null
    window and empty caption towards both.
    ``guidance_scale`` 1 uses the conditional prediction alone, 0 the unconditional one, > 1 extrapolates.
    ``operator`` and ``measurement`` (``(n, 1, ...)`` as ``operator.forward`` gives) enable data consistency.
    ``init`` (``(n, 1, *shape)`` in [-1, 1]) and ``strength`` in (0, 1] start from a noised first guess (see the
    module docstring); ``strength=1`` is pure noise whatever ``init``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != network.spatial_dims:
        raise CTFMError(f"a {network.spatial_dims}D denoiser cannot sample shape {list(shape)}")
    if any(s % network.downsampling for s in shape):
        raise CTFMError(f"every size of {list(shape)} must be a multiple of {network.downsampling} for this network")
    if text and network.text_encoder is None:
        raise CTFMError("this denoiser was trained without a text encoder, so it cannot sample from a caption")
    if (operator is None) != (measurement is None):
        raise CTFMError("restoration needs both an operator and a measurement")
    if not 0.0 < strength <= 1.0:
        raise CTFMError(f"strength must be in (0, 1], got {strength}")
    if init is not None and tuple(init.shape) != (n, network.in_channels, *shape):
        raise CTFMError(f"init has shape {list(init.shape)}; expected {[n, network.in_channels, *shape]}")
    device = next(network.parameters()).device
    if operator is not None and measurement is not None:
        operator.check(measurement, (n, network.in_channels, *shape))
        measurement = measurement.to(device)
    scheduler = sampling_scheduler(method, steps)
    null = torch.full((n, 2), NULL_WINDOW, device=device)
    condition = null if window is None else torch.tensor([check_window(*window)] * n, device=device)
    captions = None if network.text_encoder is None else [text or ""] * n
    both_captions = None if captions is None else [""] * n + captions  # null, then conditional, as in guidance
    guided = (window is not None or bool(text)) and guidance_scale != 1.0
    alphas = scheduler.alphas_cumprod.to(device)
    x = torch.randn((n, network.in_channels, *shape), generator=generator, device=device)
    walk = scheduler.timesteps
    if init is not None and strength < 1.0:
        below = walk[walk <= int(strength * NUM_TRAIN_TIMESTEPS)]
        walk = below if len(below) else walk[-1:]
        alpha = alphas[int(walk[0])]
        x = alpha.sqrt() * init.to(device) + (1 - alpha).sqrt() * x
    for t in tqdm(walk, desc="Sampling", disable=not progress):
        timesteps = torch.full((n,), int(t), device=device, dtype=torch.long)
        if guided:
            both = network(
                torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([null, condition]),
                texts=both_captions,
            )  # fmt: skip
            unconditional, conditional = both.chunk(2)
            eps = unconditional + guidance_scale * (conditional - unconditional)
        else:
            eps = network(x, timesteps, condition, texts=captions)
        alpha = alphas[int(t)]
        x0 = ((x - (1 - alpha).sqrt() * eps) / alpha.sqrt()).clamp(-1, 1)
        if operator is not None and measurement is not None:
            x0 = operator.project(x0, measurement)
        eps = (x - alpha.sqrt() * x0) / (1 - alpha).sqrt()
        x = scheduler.step(eps, int(t), x, generator=generator)[0]
    return x0 if operator is not None else x.clamp(-1, 1)
