"""Restoration quality on the HU scale: PSNR, SSIM and RMSE per image, by torchmetrics' standard definitions.

Both images are clipped to ``hu_range`` (default the canonical preprocessing range [-1024, 2048] HU) and the data
range is its width (3072 HU): ``PSNR = 10 log10(data_range^2 / MSE)`` in dB, ``RMSE = sqrt(MSE)`` in HU, and SSIM
(Wang et al. 2004: Gaussian window of 11 pixels, sigma 1.5, K1 0.01, K2 0.03) with the same data range, over 2D
images ``(N, C, y, x)`` or 3D volumes ``(N, C, z, y, x)``. Pass the window's HU range to score inside a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ctfm.errors import CTFMError

#: The HU range scored by default, that of the canonical preprocessing.
HU_RANGE = (-1024.0, 2048.0)
METRICS = ("psnr", "ssim", "rmse")


def restoration_metrics(
    restored: torch.Tensor, reference: torch.Tensor, hu_range: Sequence[float] = HU_RANGE
) -> dict[str, torch.Tensor]:
    """``{"psnr", "ssim", "rmse"}``, each ``(N,)``: one value per image of ``(N, C, *spatial)`` HU tensors."""
    if restored.shape != reference.shape:
        raise CTFMError(f"restored {tuple(restored.shape)} and reference {tuple(reference.shape)} differ in shape")
    if restored.ndim not in (4, 5):
        raise CTFMError(f"images must be (N, C, y, x) or (N, C, z, y, x), got shape {tuple(restored.shape)}")
    low, high = (float(v) for v in hu_range)
    if not high > low:
        raise CTFMError(f"hu_range must go up, got {list(hu_range)}")
    restored = restored.double().clamp(low, high)
    reference = reference.double().clamp(low, high)
    dims = tuple(range(1, restored.ndim))
    psnr = peak_signal_noise_ratio(restored, reference, data_range=high - low, reduction="none", dim=dims)
    # one tensor: the tuple comes only with return_full_image or return_contrast_sensitivity
    ssim = cast(
        torch.Tensor,
        structural_similarity_index_measure(restored, reference, data_range=high - low, reduction="none"),
    )
    rmse = (restored - reference).pow(2).mean(dim=dims).sqrt()
    return {"psnr": psnr.float(), "ssim": ssim.float(), "rmse": rmse.float()}
