"""Sampling from a diffusion checkpoint into files: one NIfTI per image in HU, and a PNG grid of them."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from ctfm.atomic import write_atomically
from ctfm.errors import CTFMError
from ctfm.hub.checkpoint import load_denoiser
from ctfm.nn.diffusion.sampling import sample
from ctfm.outputs import output_folder, refuse_overwrite
from ctfm.plotting import image_grid
from ctfm.transforms.width_level import remove_window
from ctfm.transforms.window import check_window


def spl_affine(spacing: Sequence[float]) -> np.ndarray:
    """Index (z, y, x) in SPL order -> RAS mm, as the canonical preprocessing lays arrays out."""
    dz, dy, dx = (float(s) for s in spacing)
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = dz, -dy, -dx, 1.0
    return affine


def sample_to_folder(
    checkpoint: str | Path,
    out: str | Path,
    *,
    window: Sequence[float] | None,
    text: str | None = None,
    n: int = 4,
    steps: int = 50,
    method: str = "ddim",
    guidance_scale: float = 1.0,
    size: Sequence[int] | None = None,
    spatial_dims: int | None = None,
    ema: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> list[Path]:
    """Draw ``n`` images and write ``sample_000.nii.gz ...`` (HU inside the window) and ``samples.png``.

    Without a window the images are unconditional and are written on the lung window's scale. Files of an earlier
    run in ``out`` stop the run before sampling unless ``overwrite``.

    Args:
        checkpoint: a checkpoint of the diffusion pretraining recipe.
        out: the output folder.
        window: the CT window ``(width, level)`` in HU the images are drawn in; ``None`` for unconditional.
        text: a caption, for a denoiser trained with text conditioning.
        n: how many images.
        steps: reverse steps (DDPM always walks every training step).
        method: ``"ddim"`` or ``"ddpm"``.
        guidance_scale: classifier-free guidance; 1 is plain conditional sampling.
        size: the image size in pixels / voxels; default the recipe's.
        spatial_dims: the dimension the denoiser must have (2 or 3); a checkpoint of another is refused.
        ema: use the exponential-moving-average weights.
        seed: seeds the noise.
        overwrite: replace the files of an earlier run in ``out``.

    Returns:
        The files written: ``sample_000.nii.gz`` ... then ``samples.png``.
    """
    if window is not None:
        window = check_window(*window)
    if n < 1:
        raise CTFMError(f"--n must be at least 1, got {n}")
    if steps < 1:
        raise CTFMError(f"--steps must be at least 1, got {steps}")
    out = Path(out)
    refuse_overwrite([*(out / f"sample_{index:03d}.nii.gz" for index in range(n)), out / "samples.png"], overwrite)
    network, variables = load_denoiser(checkpoint, spatial_dims=spatial_dims, ema=ema)
    size = list(size or variables.get("image_size") or [])
    if len(size) != network.spatial_dims:
        raise CTFMError(
            f"{checkpoint}: a {network.spatial_dims}D denoiser needs {network.spatial_dims} sizes, got {size}"
        )
    generator = torch.Generator().manual_seed(seed)
    images = sample(
        network,
        size,
        window,
        n=n,
        steps=steps,
        method=method,
        guidance_scale=guidance_scale,
        generator=generator,
        progress=True,
        text=text,
    )
    width, level = window or (1500.0, -500.0)
    spacing = variables.get("spacing") or (1.0, 1.0, 1.0)
    output_folder(out)
    written = []
    for index, image in enumerate(images[:, 0]):
        hu = remove_window(image, width, level).numpy()
        volume = hu[None] if network.spatial_dims == 2 else hu
        nifti = nib.Nifti1Image(volume.astype(np.float32), spl_affine(spacing))
        path = out / f"sample_{index:03d}.nii.gz"
        written.append(write_atomically(path, partial(nib.save, nifti)))
    label = f"window {width:g}/{level:g}" if window else "unconditional"
    label += f', "{text}"' if text else ""
    title = f"{label}, {method} {steps} steps, guidance {guidance_scale:g}"
    written.append(image_grid(list(images[:, 0].numpy()), out / "samples.png", title=title))
    return written
