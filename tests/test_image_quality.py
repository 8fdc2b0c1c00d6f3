"""PSNR, SSIM and RMSE on the HU scale against hand-computed values, in 2D and 3D."""

import math

import pytest
import torch

from ctfm.errors import CTFMError
from ctfm.image_quality import restoration_metrics


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (2, 1, 12, 16, 16)], ids=["2d", "3d"])
def test_known_mse_gives_the_textbook_psnr_rmse_and_ssim(shape):
    reference = torch.zeros(shape)
    restored = reference.clone()
    restored[0] += 30.72  # 1% of the 3072 HU data range
    restored[1, :, ..., ::2] += 100.0  # every other column off by 100 HU: MSE 5000
    metrics = restoration_metrics(restored, reference)
    torch.testing.assert_close(metrics["rmse"], torch.tensor([30.72, math.sqrt(5000.0)]))
    expected_psnr = torch.tensor([40.0, 10 * math.log10(3072.0**2 / 5000.0)])
    torch.testing.assert_close(metrics["psnr"], expected_psnr)
    # A constant offset d on a constant image leaves only SSIM's luminance term: C1 / (d^2 + C1), C1 = (0.01 L)^2,
    # which is 1/2 when d = 0.01 L.
    torch.testing.assert_close(metrics["ssim"][0], torch.tensor(0.5))
    assert 0 < metrics["ssim"][1] < 1
    same = restoration_metrics(reference + 5.0, reference + 5.0)
    torch.testing.assert_close(same["ssim"], torch.ones(2))
    assert torch.isinf(same["psnr"]).all() and (same["rmse"] == 0).all()


def test_values_outside_the_range_are_clipped_and_a_window_range_scores_inside_it():
    reference = torch.full((1, 1, 16, 16), -1024.0)
    beyond = reference - 500.0  # below the range: clipped back onto the reference
    assert restoration_metrics(beyond, reference)["rmse"].item() == 0
    restored = reference + 40.0
    lung = restoration_metrics(restored, reference, hu_range=(-1250.0, 250.0))
    torch.testing.assert_close(lung["psnr"], torch.tensor([20 * math.log10(1500.0 / 40.0)]))
    with pytest.raises(CTFMError, match="differ in shape"):
        restoration_metrics(restored, reference[..., :8])
    with pytest.raises(CTFMError, match="hu_range must go up"):
        restoration_metrics(restored, reference, hu_range=(100.0, 0.0))
