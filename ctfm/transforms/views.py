"""Two-view patch sampling for intra-sample SimCLR.

From one preprocessed scan ``(1, z, y, x)`` in [0, 1], :class:`ContrastiveViews` draws M patches at uniformly random
positions and turns each into two views by independent random augmentations. The augmentation set is the paper's
and the released CT-FM code's: random resized crop (scale 0.33-1.0, resized back), flip along z, histogram shift
with 5 control points, Gaussian smoothing, plus the intensity scaling and small affine the paper lists.

Speed: once scans are cached, the views are the work left per training step, so :func:`view_augmentation` augments
the *small* crop and resizes last, instead of resizing first and augmenting the full patch. Flip, rotation (the crop
scale is isotropic) and intensity scaling commute exactly with the final resize; the histogram shift is a pointwise
remapping and nearly so; the Gaussian sigma is converted to crop voxels so the blur of the final view is the one
asked for. The crop holds a third of the patch's voxels on average. Where MONAI's transforms spend their time on
machinery rather than arithmetic (histogram shift, Gaussian filtering and resizing of small tensors, the affine grid
built even when the affine does not fire), :mod:`ctfm.transforms.fast` computes the same result faster. Together:
about 4x fewer seconds per view than the same MONAI transforms applied in the usual order
(``benchmarks/pretrain_data.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    RandFlip,
    Randomizable,
    RandomizableTransform,
    RandScaleIntensity,
)
from monai.utils import MAX_SEED, convert_to_tensor

from ctfm.transforms.fast import FastHistogramShift, RandSmoothThenResize, SkipIdleRandAffine
from ctfm.transforms.preprocess import PATCH_SIZE
from ctfm.transforms.quantise import dequantise
from ctfm.transforms.view_settings import VIEWS

#: Patches drawn per scan and contrasted with each other (the paper's M).
PATCHES_PER_SCAN = 20


class RandScaledCrop(RandomizableTransform):
    """Crop a box ``s`` times the input's size along every axis (one ``s`` per call) at a random position.

    Followed by a resize back to the patch size this is the released CT-FM "random resized crop": one scale for all
    axes keeps the voxel aspect ratio, so anatomy is zoomed, not stretched.
    """

    def __init__(self, scale_range: tuple[float, float] = VIEWS.crop_scale):
        RandomizableTransform.__init__(self, prob=1.0)
        low, high = scale_range
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"scale_range must satisfy 0 < low <= high <= 1, got {scale_range}")
        self.scale_range = (float(low), float(high))
        self._box: tuple[slice, ...] = ()

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        scale = self.R.uniform(*self.scale_range)
        box = []
        for size in spatial_shape:
            length = min(size, max(1, round(scale * size)))
            start = self.R.randint(0, size - length + 1)
            box.append(slice(start, start + length))
        self._box = tuple(box)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(img.shape[1:])
        return img[(slice(None),) + self._box]


def view_augmentation(
    patch_size: Sequence[int] = PATCH_SIZE,
    *,
    crop_scale: tuple[float, float] = VIEWS.crop_scale,
    flip_prob: float = VIEWS.flip_prob,
    affine_prob: float = VIEWS.affine_prob,
    rotate_range: Sequence[float] = VIEWS.rotate_range,
    affine_scale: float = VIEWS.affine_scale,
    intensity_scale_prob: float = VIEWS.intensity_scale_prob,
    intensity_scale: float = VIEWS.intensity_scale,
    histogram_shift_prob: float = VIEWS.histogram_shift_prob,
    num_control_points: int = VIEWS.num_control_points,
    smooth_prob: float = VIEWS.smooth_prob,
    smooth_sigma: tuple[float, float] = VIEWS.smooth_sigma,
) -> Compose:
    """The augmentation giving one view of a ``(1, *patch_size)`` patch; recipes may pass any other callable.

    Defaults are :data:`ctfm.transforms.view_settings.VIEWS` (the paper's and the released CT-FM config's, shared
    with :class:`~ctfm.transforms.device_views.DeviceViews`). The released code had no affine: ``affine_prob=0``
    reproduces it. Output: float32 ``(1, *patch_size)``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    return Compose(
        [
            RandScaledCrop(scale_range=crop_scale),
            RandFlip(prob=flip_prob, spatial_axis=0),
            SkipIdleRandAffine(
                prob=affine_prob, rotate_range=tuple(rotate_range), scale_range=affine_scale, padding_mode="border"
            ),
            RandScaleIntensity(factors=intensity_scale, prob=intensity_scale_prob),
            FastHistogramShift(num_control_points=num_control_points, prob=histogram_shift_prob),
            RandSmoothThenResize(patch_size, sigma=smooth_sigma, prob=smooth_prob),
        ]
    )


class ContrastiveViews(Randomizable):
    """Preprocessed volume -> float32 ``(M, 2, 1, pz, py, px)``: M random patches, two augmented views each.

    ``volume`` is ``(1, z, y, x)`` (or ``(z, y, x)``) in [0, 1]: a tensor, a float array, or an unsigned integer
    array from :func:`~ctfm.transforms.quantise.quantise` (the preprocessing cache's uint16). Only the M patches are
    read, so a memory-mapped cache file is never loaded whole. A volume smaller than a patch is padded
    with air (0). ``set_random_state`` seeds patch positions and the augmentation together.
    """

    def __init__(
        self,
        patch_size: Sequence[int] = PATCH_SIZE,
        patches_per_scan: int = PATCHES_PER_SCAN,
        augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive sizes (z, y, x), got {patch_size}")
        if patches_per_scan < 1:
            raise ValueError(f"patches_per_scan must be at least 1, got {patches_per_scan}")
        self.patches_per_scan = int(patches_per_scan)
        self.augmentation = view_augmentation(self.patch_size) if augmentation is None else augmentation
        self._starts = np.zeros((self.patches_per_scan, 3), dtype=np.int64)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> ContrastiveViews:
        super().set_random_state(seed=seed, state=state)
        if isinstance(self.augmentation, Randomizable):
            self.augmentation.set_random_state(seed=int(self.R.randint(MAX_SEED)))
        return self

    def randomize(self, spatial_shape: Sequence[int]) -> None:
        """Draw the M patch corners uniformly among all positions where a patch fits."""
        high = [max(size - patch, 0) + 1 for size, patch in zip(spatial_shape, self.patch_size)]
        self._starts = np.stack([self.R.randint(0, h, size=self.patches_per_scan) for h in high], axis=1)

    def region(self, volume: np.ndarray | torch.Tensor, start: Sequence[int]) -> np.ndarray | torch.Tensor:
        """The volume's ``(1, pz, py, px)`` box at ``start``, as stored (smaller where the volume is too small)."""
        return volume[(slice(None),) + tuple(slice(int(s), int(s) + p) for s, p in zip(start, self.patch_size))]

    def padded(self, patch: torch.Tensor) -> torch.Tensor:
        """``patch`` padded with 0 (air, in floats and in the cache's codes alike) up to the patch size."""
        missing = [p - s for p, s in zip(self.patch_size, patch.shape[1:])]
        if any(missing):
            patch = torch.nn.functional.pad(patch, [v for m in reversed(missing) for v in (0, m)], value=0)
        return patch

    def patch(self, volume: np.ndarray | torch.Tensor, start: Sequence[int]) -> torch.Tensor:
        """The float32 ``(1, pz, py, px)`` patch at ``start``, padded with air where the volume is too small."""
        return self.padded(dequantise(self.region(volume, start)))

    def _start(self, volume: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Check ``volume`` is ``(1, z, y, x)`` (a ``(z, y, x)`` one gets its channel) and draw the M corners."""
        if volume.ndim == 3:
            volume = volume[None]
        if volume.ndim != 4 or volume.shape[0] != 1:
            raise ValueError(f"expected a (1, z, y, x) volume, got shape {tuple(volume.shape)}")
        self.randomize(volume.shape[1:])
        return volume

    def __call__(self, volume: np.ndarray | torch.Tensor) -> torch.Tensor:
        volume = self._start(volume)
        views = torch.empty((self.patches_per_scan, 2, 1, *self.patch_size), dtype=torch.float32)
        track_meta = get_track_meta()
        set_track_meta(False)  # patches carry no geometry worth tracking; MetaTensor bookkeeping costs ~20 %
        with warnings.catch_warnings():
            # An all-air patch has one intensity; MONAI's histogram shift then warns and leaves it unchanged.
            warnings.filterwarnings("ignore", message="The image's intensity is a single value")
            try:
                self._fill(views, volume)
            finally:
                set_track_meta(track_meta)
        return views

    def _fill(self, views: torch.Tensor, volume: np.ndarray | torch.Tensor) -> None:
        for m, start in enumerate(self._starts):
            patch = self.patch(volume, start)
            for v in range(2):
                view = convert_to_tensor(self.augmentation(patch), track_meta=False)
                if view.shape != patch.shape:
                    raise ValueError(
                        f"the view augmentation must return shape {tuple(patch.shape)}, got {tuple(view.shape)}"
                    )
                views[m, v] = view


class ContrastivePatches(ContrastiveViews):
    """Preprocessed volume -> the M raw patches ``(M, 1, pz, py, px)`` of :class:`ContrastiveViews`, unaugmented.

    For views made on the training device (:class:`~ctfm.transforms.device_views.DeviceViews`): the DataLoader
    workers only read the patches, each the box that both of its views are cropped from, and keep the cache's
    uint16 codes (half the bytes of float32 to collate, pin and transfer); a float volume gives float patches.
    """

    def __init__(self, patch_size: Sequence[int] = PATCH_SIZE, patches_per_scan: int = PATCHES_PER_SCAN):
        super().__init__(patch_size, patches_per_scan, augmentation=_unchanged)

    def raw_patch(self, volume: np.ndarray | torch.Tensor, start: Sequence[int]) -> torch.Tensor:
        """The ``(1, pz, py, px)`` patch at ``start`` in the volume's own dtype, padded with 0 (air)."""
        region = self.region(volume, start)
        return self.padded(region.clone() if isinstance(region, torch.Tensor) else torch.from_numpy(np.array(region)))

    def __call__(self, volume: np.ndarray | torch.Tensor) -> torch.Tensor:
        volume = self._start(volume)
        return torch.stack([self.raw_patch(volume, start) for start in self._starts])


def _unchanged(patch: torch.Tensor) -> torch.Tensor:
    return patch
