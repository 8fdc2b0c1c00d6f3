"""Low-dose CT simulated from a full-dose image, for training low-dose enhancement on data without pairs.

``noise="poisson"`` (the 2D default) simulates a lower tube current in the projection domain, slice by slice:
HU -> linear attenuation ``mu = mu_water * (1 + HU / 1000)`` (per mm, air 0, clipped at 0), parallel-beam line
integrals ``p`` by scikit-image's ``radon``, detected counts ``Poisson(I0 * exp(-p))`` (Beer-Lambert), ``-log`` of
them back to noisy integrals, and filtered back-projection (``iradon``, ramp filter) of the difference to the clean
integrals, which is added to the image. Only the noise goes through the reconstruction, so the pair differs by
noise alone and not by FBP's own blur. Fewer photons (lower ``i0``) give more noise, as on a scanner.
``noise="gaussian"`` (the 3D default) adds white Gaussian noise of ``sigma`` HU.

Arrays are ``(C, *spatial)`` in HU, ``spatial`` being (y, x) in 2D or (z, y, x) in 3D (axial slices along z).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from ctfm.errors import CTFMError

#: Linear attenuation of water per mm at a typical effective energy (about 70 keV).
MU_WATER_PER_MM = 0.0192
NOISE_MODELS = ("poisson", "gaussian")


def hu_to_attenuation(hu: np.ndarray, mu_water: float = MU_WATER_PER_MM) -> np.ndarray:
    """HU -> linear attenuation per mm (air and anything below it 0)."""
    return np.clip(mu_water * (1.0 + hu / 1000.0), 0.0, None)


class SimulateLowDose(Randomizable, Transform):
    """``(C, *spatial)`` full-dose HU -> simulated low-dose HU of the same shape, seeded by ``set_random_state``.

    Args:
        spatial_dims: 2 (images ``(C, y, x)``) or 3 (volumes ``(C, z, y, x)``).
        noise: ``poisson`` (projection domain, each axial slice) or ``gaussian`` (image domain); default
            ``poisson`` in 2D, ``gaussian`` in 3D.
        i0: incident photons per detector bin and view (Poisson); lower is a lower dose.
        sigma: standard deviation in HU (Gaussian).
        pixel_mm: in-plane pixel size, so line integrals are in attenuation lengths.
        views: projection angles over 180 degrees (default: the largest in-plane size).
        mu_water: attenuation of water per mm.
    """

    def __init__(
        self,
        spatial_dims: int,
        noise: str | None = None,
        i0: float = 1e4,
        sigma: float = 25.0,
        pixel_mm: float = 1.0,
        views: int | None = None,
        mu_water: float = MU_WATER_PER_MM,
    ):
        if spatial_dims not in (2, 3):
            raise CTFMError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        noise = noise or ("poisson" if spatial_dims == 2 else "gaussian")
        if noise not in NOISE_MODELS:
            raise CTFMError(f"unknown low-dose noise model {noise!r}; known: {', '.join(NOISE_MODELS)}")
        for name, value in (("i0", i0), ("pixel_mm", pixel_mm), ("mu_water", mu_water)):
            if not value > 0:
                raise CTFMError(f"{name} must be > 0, got {value}")
        if sigma < 0:
            raise CTFMError(f"sigma must be >= 0 HU, got {sigma}")
        if views is not None and views < 1:
            raise CTFMError(f"views must be at least 1, got {views}")
        self.spatial_dims = spatial_dims
        self.noise = noise
        self.i0 = float(i0)
        self.sigma = float(sigma)
        self.pixel_mm = float(pixel_mm)
        self.views = views
        self.mu_water = float(mu_water)

    def randomize(self, data: Any = None) -> None:
        pass  # the noise is drawn from self.R inside __call__, one draw per slice

    def _poisson_slice(self, hu: np.ndarray) -> np.ndarray:
        from skimage.transform import iradon, radon

        size = max(hu.shape)
        top, left = (size - hu.shape[0]) // 2, (size - hu.shape[1]) // 2
        mu = np.zeros((size, size))  # a non-square slice sits in a square of air
        mu[top : top + hu.shape[0], left : left + hu.shape[1]] = hu_to_attenuation(hu, self.mu_water)
        angles = np.linspace(0.0, 180.0, self.views or size, endpoint=False)
        integrals = radon(mu * self.pixel_mm, angles, circle=False)
        counts = self.R.poisson(self.i0 * np.exp(-integrals))
        noisy = -np.log(np.maximum(counts, 1) / self.i0)  # a bin with no photon reads as one
        delta_mu = iradon(noisy - integrals, angles, output_size=size, filter_name="ramp", circle=False)
        delta_mu = delta_mu[top : top + hu.shape[0], left : left + hu.shape[1]] / self.pixel_mm
        return hu + 1000.0 * delta_mu / self.mu_water

    def __call__(self, image: torch.Tensor | np.ndarray) -> torch.Tensor:
        tensor = torch.as_tensor(image)
        if tensor.ndim != 1 + self.spatial_dims:
            raise CTFMError(
                f"SimulateLowDose({self.spatial_dims}D) needs (C, *spatial) arrays of {1 + self.spatial_dims} "
                f"dimensions, got shape {tuple(tensor.shape)}"
            )
        hu = tensor.detach().cpu().double().numpy()
        if self.noise == "gaussian":
            low = hu + self.R.normal(0.0, self.sigma, size=hu.shape)
        else:
            slices = hu.reshape(-1, *hu.shape[-2:])
            low = np.stack([self._poisson_slice(s) for s in slices]).reshape(hu.shape)
        return torch.from_numpy(low).to(dtype=tensor.dtype if tensor.is_floating_point() else torch.float32)


class SimulateLowDosed(Randomizable, MapTransform):
    """Dictionary form: writes the low-dose version of each key to ``f"{key}{suffix}"`` (default ``image_low``)."""

    def __init__(self, keys: KeysCollection, suffix: str = "_low", allow_missing_keys: bool = False, **kwargs: Any):
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.suffix = suffix
        self.simulate = SimulateLowDose(**kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.simulate.set_random_state(state=self.R)
        return self

    def randomize(self, data: Any = None) -> None:
        pass

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[f"{key}{self.suffix}"] = self.simulate(out[key])
        return out
