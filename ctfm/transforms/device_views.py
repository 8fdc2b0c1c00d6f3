"""Contrastive views made on the training device: every view of a batch by a few batched torch ops.

On a CPU, :func:`~ctfm.transforms.views.view_augmentation` makes about a hundred views per second per core, while
one GPU trains on 640-1,600 per second at full size: augmenting in DataLoader workers needs 5-18 cores per GPU.
Here workers only read the raw patches (the cache's uint16, each the box both of its views are cropped from) and
:class:`DeviceViews` turns a batch of them into two views each on the device, :data:`CHUNK` views per op:

- intensity scaling and the histogram shift (MONAI's piecewise-linear map as a sum of hinges, with per-view knots
  over the crop's range) are pointwise, so they run on the patch, where they commute with cropping;
- crop, flip along z, trilinear resize back and Gaussian smoothing (MONAI's ``gaussian_1d`` "erf" kernels, 4
  sigma, zero padding) are linear maps along each axis: one small matrix per view and axis, their product applied
  by three batched matmuls;
- views through the random affine (p 0.2) are sampled by one ``grid_sample`` (crop, affine about the crop's
  centre with border padding, flip and resize composed as one coordinate map), then smoothed.

The parameters are drawn from the worker pipeline's distributions (same probabilities and ranges, including
MONAI's quirk that RandAffine's ``scale_range=0.1`` scales the first axis only) from a ``torch.Generator`` on the
CPU, so the same seed gives the same views on any device. One difference in order: smoothing acts on the final
view with sigma in its voxels (the worker pipeline smooths the small crop with sigma converted to crop voxels);
and an affine view is interpolated once rather than twice (affine, then resize).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from ctfm.transforms.view_settings import VIEWS

#: Views sampled by one grid_sample call: bounds the sampling grid's memory (about 5 MB per 24x128x128 view).
CHUNK = 64


@dataclass
class ViewParameters:
    """The random draw for N views of ``patch_size`` patches, one row per view (CPU tensors, float64)."""

    crop_start: torch.Tensor  # (N, 3) long: the crop box's corner in the patch
    crop_size: torch.Tensor  # (N, 3) long: the crop box's size (one scale for all axes, rounded)
    flip: torch.Tensor  # (N,) bool: flipped along z
    affine: torch.Tensor  # (N, 3, 3): rotation @ scale in crop voxels, identity where the affine does not fire
    intensity: torch.Tensor  # (N,): the intensity factor, 1 where scaling does not fire
    histogram: torch.Tensor  # (N,) bool: the histogram shift fires
    control_points: torch.Tensor  # (N, K): the moved control points in [0, 1] (the reference ones are linspace)
    smooth: torch.Tensor  # (N,) bool: Gaussian smoothing fires
    sigma: torch.Tensor  # (N, 3): smoothing sigma per axis in view voxels

    def to(self, device: torch.device | str) -> ViewParameters:
        return ViewParameters(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class DeviceViews:
    """Raw patches ``(S, M, 1, z, y, x)`` -> float32 views ``(S, M, 2, 1, z, y, x)``, batched on their device.

    The defaults are :data:`~ctfm.transforms.view_settings.VIEWS`, shared with the workers' pipeline; views keep the
    patch's size. Patches may be the cache's unsigned integers (read as the unit range, like
    :func:`~ctfm.transforms.quantise.dequantise`) or floats in [0, 1].

    Args:
        crop_scale: (low, high) range of the scale ``s`` of a random crop: a box ``s`` times the patch's size
            along every axis, resized back to the patch (zoom without stretching).
        flip_prob: probability of a flip along z.
        affine_prob: probability of a random rotation and scaling.
        rotate_range: largest rotation in radians about the z, y and x axes (small out of the axial plane, where
            voxels are 3x thicker).
        affine_scale: largest relative scaling of the affine, e.g. 0.1 for +-10%.
        intensity_scale_prob: probability of multiplying intensities by (1 +- ``intensity_scale``).
        intensity_scale: the largest relative intensity change.
        histogram_shift_prob: probability of a random monotone remapping of intensities.
        num_control_points: control points of that remapping (at least 3).
        smooth_prob: probability of a Gaussian smoothing.
        smooth_sigma: (low, high) range of its sigma, in voxels.
        seed: the run's seed: :meth:`generator` derives one stream per (rank, batch) from it, so DDP ranks and
            batches differ.
        chunk: views sampled by one ``grid_sample`` call; bounds the sampling grid's memory.
    """

    def __init__(
        self,
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
        seed: int = 0,
        chunk: int = CHUNK,
    ):
        low, high = crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale}")
        if len(rotate_range) != 3:
            raise ValueError(f"rotate_range must have 3 values (radians about z, y, x), got {list(rotate_range)}")
        if num_control_points < 3:
            raise ValueError(f"num_control_points must be at least 3, got {num_control_points}")
        if not 0.0 < smooth_sigma[0] <= smooth_sigma[1]:
            raise ValueError(f"smooth_sigma must satisfy 0 < low <= high, got {smooth_sigma}")
        self.crop_scale = (float(low), float(high))
        self.flip_prob = float(flip_prob)
        self.affine_prob = float(affine_prob)
        self.rotate_range = tuple(float(r) for r in rotate_range)
        self.affine_scale = float(affine_scale)
        self.intensity_scale_prob = float(intensity_scale_prob)
        self.intensity_scale = float(intensity_scale)
        self.histogram_shift_prob = float(histogram_shift_prob)
        self.num_control_points = int(num_control_points)
        self.smooth_prob = float(smooth_prob)
        self.smooth_sigma = (float(smooth_sigma[0]), float(smooth_sigma[1]))
        self.seed = int(seed)
        self.chunk = max(1, int(chunk))

    def generator(self, rank: int = 0, batch: int = 0) -> torch.Generator:
        """The CPU generator for one batch of one rank: independent streams from (seed, rank, batch)."""
        state = np.random.SeedSequence([self.seed, rank, batch]).generate_state(2, dtype=np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def draw(self, count: int, patch_size: Sequence[int], generator: torch.Generator) -> ViewParameters:
        """Parameters for ``count`` views of ``patch_size`` patches (see :class:`ViewParameters`)."""

        def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
            return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)

        def fires(prob: float) -> torch.Tensor:
            return uniform(count) < prob

        size = torch.tensor([int(p) for p in patch_size], dtype=torch.float64)
        scale = uniform(count, 1, low=self.crop_scale[0], high=self.crop_scale[1])
        crop_size = torch.minimum(torch.round(scale * size).clamp(min=1.0), size)  # round half to even, as Python
        positions = size - crop_size + 1
        crop_start = torch.minimum((uniform(count, 3) * positions).floor(), positions - 1)
        flip = fires(self.flip_prob)

        affine = fires(self.affine_prob)
        angles = uniform(count, 3, low=-1.0, high=1.0) * torch.tensor(self.rotate_range, dtype=torch.float64)
        # RandAffine(scale_range=0.1) draws one factor, which MONAI's create_scale applies to the first axis only.
        first_axis_scale = uniform(count, low=1.0 - self.affine_scale, high=1.0 + self.affine_scale)
        scaling = torch.diag_embed(torch.stack([first_axis_scale, torch.ones(count), torch.ones(count)], dim=1))
        matrices = rotation_matrices(angles) @ scaling
        identity = torch.eye(3, dtype=torch.float64).expand(count, 3, 3)
        matrices = torch.where(affine[:, None, None], matrices, identity)

        scaled = fires(self.intensity_scale_prob)
        factor = uniform(count, low=1.0 - self.intensity_scale, high=1.0 + self.intensity_scale)
        intensity = torch.where(scaled, factor, torch.ones(count, dtype=torch.float64))

        histogram = fires(self.histogram_shift_prob)
        points = torch.linspace(0.0, 1.0, self.num_control_points, dtype=torch.float64).repeat(count, 1)
        for i in range(1, self.num_control_points - 1):  # each between its (already moved) left and right neighbours
            points[:, i] = points[:, i - 1] + (points[:, i + 1] - points[:, i - 1]) * uniform(count)

        smooth = fires(self.smooth_prob)
        sigma = uniform(count, 3, low=self.smooth_sigma[0], high=self.smooth_sigma[1])
        return ViewParameters(
            crop_start=crop_start.long(),
            crop_size=crop_size.long(),
            flip=flip,
            affine=matrices,
            intensity=intensity,
            histogram=histogram,
            control_points=points,
            smooth=smooth,
            sigma=sigma,
        )

    def __call__(self, patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Two views of every patch of ``(S, M, 1, z, y, x)``: ``(S, M, 2, 1, z, y, x)`` float32."""
        if patches.ndim != 6 or patches.shape[2] != 1:
            raise ValueError(f"expected patches of shape (scans, patches, 1, z, y, x), got {tuple(patches.shape)}")
        scans, per_scan = patches.shape[:2]
        volumes = unit_range(patches).flatten(0, 1)
        volumes = volumes.unsqueeze(1).expand(-1, 2, -1, -1, -1, -1).flatten(0, 1)  # view 0, view 1 of each patch
        params = self.draw(volumes.shape[0], volumes.shape[2:], generator).to(volumes.device)
        return self.apply(volumes, params).view(scans, per_scan, 2, *volumes.shape[1:])

    @torch.no_grad()
    def apply(self, volumes: torch.Tensor, params: ViewParameters) -> torch.Tensor:
        """The views of float ``(N, 1, z, y, x)`` volumes for the drawn ``params``: ``(N, 1, z, y, x)`` float32."""
        views = [
            self._chunk(volumes[i : i + self.chunk].float(), _rows(params, slice(i, i + self.chunk)))
            for i in range(0, volumes.shape[0], self.chunk)
        ]
        return torch.cat(views)

    def _chunk(self, volumes: torch.Tensor, params: ViewParameters) -> torch.Tensor:
        """Pointwise maps on the whole patch (they commute with cropping), then one linear map per axis.

        Without the affine, crop, flip, resize and smoothing are all linear maps along each axis, so their product
        (one small matrix per view and axis) makes the view in a single pass, as the worker pipeline's fused
        smoothing and resize does; views through the affine are sampled by ``grid_sample`` and then smoothed.
        """
        count, _, *patch = volumes.shape
        volumes = volumes * params.intensity.to(volumes.dtype).view(-1, 1, 1, 1, 1)
        shifted = params.histogram.nonzero().flatten()
        if shifted.numel():
            low, high = crop_range(volumes[shifted], params.crop_start[shifted], params.crop_size[shifted])
            volumes[shifted] = histogram_shift(volumes[shifted], params.control_points[shifted], low, high)
        smoothing = [
            torch.where(
                params.smooth.view(-1, 1, 1),
                gaussian_matrices(params.sigma[:, axis], size),
                torch.eye(size, device=volumes.device).expand(count, size, size),
            )
            for axis, size in enumerate(patch)
        ]
        resize = crop_resize_matrices(params, patch)
        views = separable_product(volumes, *(blur @ scale for blur, scale in zip(smoothing, resize)))
        rotated = params.affine != torch.eye(3, dtype=params.affine.dtype, device=params.affine.device)
        rotated = rotated.flatten(1).any(dim=1).nonzero().flatten()
        if rotated.numel():
            sampled = resized_crops(volumes[rotated], _rows(params, rotated))
            views[rotated] = separable_product(sampled, *(blur[rotated] for blur in smoothing))
        return views


def _rows(params: ViewParameters, rows: slice | torch.Tensor) -> ViewParameters:
    return ViewParameters(**{f.name: getattr(params, f.name)[rows] for f in fields(params)})


def separable_product(volumes: torch.Tensor, depth: torch.Tensor, height: torch.Tensor, width: torch.Tensor):
    """``(N, 1, z, y, x)`` through one linear map per view and axis, matrices ``(N, out, in)``: batched matmuls."""
    count, _, size_z, size_y, size_x = volumes.shape
    along_x = volumes.reshape(count, size_z * size_y, size_x) @ width.transpose(1, 2)
    along_y = height[:, None] @ along_x.view(count, size_z, size_y, width.shape[1])
    along_z = depth @ along_y.view(count, size_z, -1)
    return along_z.view(count, 1, depth.shape[1], height.shape[1], width.shape[1])


def _crop_coordinates(params: ViewParameters, axis: int, length: int, device: torch.device) -> torch.Tensor:
    """``(N, length)``: where each output voxel samples its crop along ``axis`` (trilinear, ``align_corners=False``,
    as ``interpolate``: source = (out + 0.5) x crop / patch - 0.5, clamped into the crop)."""
    size = params.crop_size[:, axis : axis + 1].to(device=device, dtype=torch.float32)
    source = (torch.arange(length, device=device, dtype=torch.float32) + 0.5) * (size / length) - 0.5
    return torch.minimum(source.clamp(min=0.0), size - 1)


def crop_resize_matrices(params: ViewParameters, patch: Sequence[int]) -> list[torch.Tensor]:
    """Per axis ``(N, patch, patch)``: crop, flip along z and linear resize back to the patch size."""
    device = params.crop_size.device
    matrices = []
    for axis, length in enumerate(patch):
        source = _crop_coordinates(params, axis, length, device)
        size = params.crop_size[:, axis : axis + 1]
        low = source.floor().long()
        high = torch.minimum(low + 1, size - 1)
        weight = source - low
        if axis == 0:  # the flip mirrors crop voxels: c -> size - 1 - c
            flip = params.flip.view(-1, 1)
            low, high = torch.where(flip, size - 1 - low, low), torch.where(flip, size - 1 - high, high)
        start = params.crop_start[:, axis : axis + 1]
        matrix = torch.zeros(source.shape[0], length, length, device=device)
        matrix.scatter_add_(2, (start + low)[..., None], (1.0 - weight)[..., None])
        matrix.scatter_add_(2, (start + high)[..., None], weight[..., None])
        matrices.append(matrix)
    return matrices


def crop_range(volumes: torch.Tensor, start: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each view's minimum and maximum inside its crop box: the range the worker pipeline's histogram shift sees."""
    inside = None
    for axis, length in enumerate(volumes.shape[2:]):
        index = torch.arange(length, device=volumes.device)
        along = (index >= start[:, axis : axis + 1]) & (index < (start + size)[:, axis : axis + 1])
        shape = [-1, 1, 1, 1, 1]
        shape[2 + axis] = length
        inside = along.view(shape) if inside is None else inside & along.view(shape)
    assert inside is not None
    low = torch.where(inside, volumes, torch.inf).amin(dim=(1, 2, 3, 4))
    high = torch.where(inside, volumes, -torch.inf).amax(dim=(1, 2, 3, 4))
    return low, high


def unit_range(patches: torch.Tensor) -> torch.Tensor:
    """float32 in [0, 1] from the cache's unsigned integers (full range = 1), or floats as they are."""
    if patches.is_floating_point():
        return patches.float()
    maximum = {torch.uint8: 255, torch.uint16: 65535}.get(patches.dtype)
    if maximum is None:
        raise ValueError(f"patches must be floats in [0, 1] or uint8 / uint16 codes, got {patches.dtype}")
    return patches.float().mul_(1.0 / maximum)


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(N, 3, 3)`` rotations about the first, second and third axis (intrinsic, in that order), as MONAI's
    ``create_rotate(3, angles)`` builds them."""
    cos, sin = angles.cos(), angles.sin()
    zero, one = torch.zeros_like(angles[:, 0]), torch.ones_like(angles[:, 0])
    about_0 = torch.stack([one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], 1)
    about_1 = torch.stack([cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1)
    about_2 = torch.stack([cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], 1)
    return about_0.view(-1, 3, 3) @ about_1.view(-1, 3, 3) @ about_2.view(-1, 3, 3)


def resized_crops(volumes: torch.Tensor, params: ViewParameters) -> torch.Tensor:
    """Crop, flip along z, random affine (border padding) and trilinear resize back, as one ``grid_sample``.

    Each output voxel is followed back through the chain: the resize (as :func:`crop_resize_matrices`), the affine
    about the crop's centre (clamped into the crop, which is border padding), the flip, the crop's offset. The
    worker pipeline interpolates twice (affine, then resize), this once.
    """
    count, _, *patch = volumes.shape
    device = volumes.device
    size = params.crop_size.to(device=device, dtype=torch.float32)
    centre = (size - 1) / 2
    shapes = [(count, -1, 1, 1), (count, 1, -1, 1), (count, 1, 1, -1)]
    offsets = [
        (_crop_coordinates(params, axis, length, device) - centre[:, axis : axis + 1]).view(shapes[axis])
        for axis, length in enumerate(patch)
    ]
    matrix = params.affine.to(device=device, dtype=torch.float32)
    coordinates = []
    for axis in range(3):
        moved = centre[:, axis].view(-1, 1, 1, 1) + sum(
            matrix[:, axis, j].view(-1, 1, 1, 1) * offsets[j] for j in range(3)
        )
        upper = (size[:, axis] - 1).view(-1, 1, 1, 1)
        moved = torch.minimum(moved.clamp(min=0.0), upper)
        if axis == 0:
            moved = torch.where(params.flip.view(-1, 1, 1, 1), upper - moved, moved)
        moved = moved + params.crop_start[:, axis].to(torch.float32).view(-1, 1, 1, 1)
        coordinates.append(moved * (2.0 / max(patch[axis] - 1, 1)) - 1.0)  # align_corners=True: centres at +-1
    grid = torch.stack(torch.broadcast_tensors(*coordinates[::-1]), dim=-1)  # grid_sample wants (x, y, z) order
    return F.grid_sample(volumes, grid, mode="bilinear", padding_mode="border", align_corners=True)


def histogram_shift(
    volumes: torch.Tensor, control_points: torch.Tensor, low: torch.Tensor, high: torch.Tensor
) -> torch.Tensor:
    """MONAI's histogram shift per view: reference control points spread evenly over ``[low, high]`` (the range the
    view comes from) map to the moved ones, linearly in between; a view of one value is left as it is (as MONAI)."""
    low, high = low.double(), high.double()
    span = high - low
    knots = torch.linspace(0.0, 1.0, control_points.shape[1], dtype=torch.float64, device=volumes.device)
    xp = knots * span[:, None] + low[:, None]
    fp = control_points * span[:, None] + low[:, None]
    slopes = (fp[:, 1:] - fp[:, :-1]) / (xp[:, 1:] - xp[:, :-1]).clamp(min=torch.finfo(torch.float64).tiny)
    changes = slopes[:, 1:] - slopes[:, :-1]

    def per_view(values: torch.Tensor) -> torch.Tensor:
        return values.to(volumes.dtype).view(-1, 1, 1, 1, 1)

    x = torch.maximum(torch.minimum(volumes, per_view(high)), per_view(low))
    out = (x - per_view(xp[:, 0])) * per_view(slopes[:, 0]) + per_view(fp[:, 0])
    for k in range(changes.shape[1]):
        out += (x - per_view(xp[:, k + 1])).clamp_(min=0.0) * per_view(changes[:, k])
    return torch.where((span > 0).view(-1, 1, 1, 1, 1), out, volumes)


def gaussian_kernels(sigma: torch.Tensor, truncated: float = 4.0) -> torch.Tensor:
    """``(N, 2 * tail + 1)`` kernels of MONAI's ``gaussian_1d(sigma, truncated, "erf")`` for N sigmas, each zero
    beyond its own tail (``int(max(truncated * sigma, 0.5) + 0.5)``) and centred in the common length."""
    sigma = sigma.float()
    tails = (torch.clamp(sigma * truncated, min=0.5) + 0.5).floor()
    tail = int(tails.max())
    x = torch.arange(-tail, tail + 1, dtype=torch.float32, device=sigma.device)
    t = (0.70710678 / sigma.abs())[:, None]
    kernels = (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0.0)
    return torch.where(x.abs() <= tails[:, None], kernels, torch.zeros_like(kernels))


def gaussian_matrices(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, size, size)``: MONAI's Gaussian filtering along one axis (zero padding) for N sigmas, as matrices."""
    kernels = gaussian_kernels(sigma)
    tail = (kernels.shape[1] - 1) // 2
    index = torch.arange(size, device=sigma.device)
    offset = index[None, :] - index[:, None]  # input j for output i
    weights = kernels[:, (offset + tail).clamp(0, 2 * tail)]
    return torch.where(offset.abs() <= tail, weights, torch.zeros_like(weights))
