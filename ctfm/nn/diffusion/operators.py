"""Linear measurement operators for guided restoration, each with its data-consistency projection.

``forward(x)`` maps images ``(N, C, *spatial)`` in the model's intensity space ([-1, 1], windowed) to measurements;
``project(x, y)`` returns the image nearest ``x`` (exactly, or by a few iterations) whose measurement is ``y``;
``check(y, image_shape)`` refuses, with one line and before any sampling, a measurement of the wrong shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ctfm.errors import CTFMError


class LinearOperator(ABC):
    """A linear forward model A with a data-consistency step."""

    @abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def check(self, measurement: torch.Tensor, image_shape: Sequence[int]) -> None:
        expected = tuple(self.forward(torch.zeros(tuple(image_shape))).shape)
        if tuple(measurement.shape) != expected:
            raise CTFMError(
                f"{type(self).__name__}: the measurement has shape {tuple(measurement.shape)} but images of shape "
                f"{tuple(image_shape)} give {expected}"
            )


class Downsample(LinearOperator):
    """Average pooling by ``factor`` along every spatial axis: low resolution for zero-shot super-resolution.

    The projection adds the nearest-neighbour up-sampled residual, the pseudo-inverse of average pooling, so
    ``forward(project(x, y)) == y`` exactly.
    """

    def __init__(self, factor: int, spatial_dims: int):
        if factor < 1:
            raise CTFMError(f"the down-sampling factor must be at least 1, got {factor}")
        if spatial_dims not in (2, 3):
            raise CTFMError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.factor = int(factor)
        self.spatial_dims = spatial_dims

    def _check_divisible(self, x: torch.Tensor) -> None:
        if x.ndim != 2 + self.spatial_dims or any(s % self.factor for s in x.shape[2:]):
            raise CTFMError(
                f"Downsample({self.factor}, {self.spatial_dims}D) needs (N, C, *spatial) images with every size a "
                f"multiple of {self.factor}, got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_divisible(x)
        pool = F.avg_pool2d if self.spatial_dims == 2 else F.avg_pool3d
        return pool(x, self.factor)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x + F.interpolate(y - self.forward(x), scale_factor=self.factor, mode="nearest")


def _skimage_transform():
    """scikit-image's transforms, imported on first use (they pull in SciPy's image stack)."""
    from skimage import transform

    return transform


class ParallelBeam(LinearOperator):
    """2D parallel-beam projection at ``angles`` (degrees) by scikit-image's ``radon``, on images mapped to [0, 1].

    The projection runs ``iterations`` SART passes (``iradon_sart``) started from the current estimate. The field of
    view is the circle inscribed in the image (``circle=True``), as on a scanner.
    """

    def __init__(self, angles: Sequence[float], iterations: int = 1, relaxation: float = 0.15):
        if len(angles) < 1:
            raise CTFMError("ParallelBeam needs at least one projection angle")
        self.angles = np.asarray(angles, dtype=np.float64)
        self.iterations = iterations
        self.relaxation = relaxation

    @classmethod
    def sparse(cls, views: int, **kwargs) -> ParallelBeam:
        """``views`` angles evenly spread over 180 degrees."""
        return cls(np.linspace(0.0, 180.0, views, endpoint=False).tolist(), **kwargs)

    def _slices(self, x: torch.Tensor) -> np.ndarray:
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
            raise CTFMError(f"ParallelBeam is 2D: it needs (N, 1, n, n) square slices, got shape {tuple(x.shape)}")
        images = (x[:, 0].detach().cpu().double().numpy() + 1) / 2
        size = images.shape[-1]
        radius = (np.arange(size) - (size - 1) / 2) ** 2
        inside = radius[:, None] + radius[None, :] <= ((size - 1) / 2) ** 2
        return images * inside  # outside the field of view is air (0 here, -1 in the model's space)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        radon = _skimage_transform().radon
        sinograms = [radon(image, self.angles, circle=True) for image in self._slices(x)]
        return torch.from_numpy(np.stack(sinograms)[:, None]).to(x.dtype)

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        iradon_sart = _skimage_transform().iradon_sart
        images = []
        for image, sinogram in zip(self._slices(x), y[:, 0].double().cpu().numpy()):
            for _ in range(self.iterations):
                image = iradon_sart(sinogram, self.angles, image=image, relaxation=self.relaxation)
            images.append(image)
        return (torch.from_numpy(np.stack(images)[:, None]) * 2 - 1).to(x)

    def filtered_back_projection(self, y: torch.Tensor) -> torch.Tensor:
        """The baseline: FBP (ramp filter) of the sinograms, in [-1, 1] like the images."""
        iradon = _skimage_transform().iradon
        images = [iradon(s, self.angles, filter_name="ramp", circle=True) for s in y[:, 0].double().cpu().numpy()]
        return (torch.from_numpy(np.stack(images)[:, None]) * 2 - 1).float()
