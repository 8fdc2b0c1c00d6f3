"""The one set of defaults of a contrastive view's augmentation, shared by the two pipelines that make views.

The workers' MONAI pipeline (:func:`ctfm.transforms.views.view_augmentation`) and the batched GPU version
(:class:`ctfm.transforms.device_views.DeviceViews`) must draw the same distribution of views; both take their
default parameters from :data:`VIEWS`, so a change here changes both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ViewSettings:
    """Parameters of one view's augmentation.

    Defaults follow the CT-FM paper and its released config (crop scale 0.33-1.0, flip along z p 0.5, histogram
    shift with 5 control points p 0.5, Gaussian smoothing sigma 0.25-1.5 voxels p 0.5). The paper names intensity
    scaling and a random affine without numbers; here: intensity x (1 +- 0.1) with p 0.5, and with p 0.2 a rotation
    of up to 0.26 rad in the axial (y, x) plane, 0.05 rad out of it (voxels are 3x thicker along z), scale +- 0.1.

    Attributes:
        crop_scale: (low, high) fraction of the patch's extent per axis that the random crop keeps.
        flip_prob: probability of a flip along z.
        affine_prob: probability of the random affine (0 reproduces the released code, which had none).
        rotate_range: largest rotation in radians about (z, y, x).
        affine_scale: largest relative scaling of the affine.
        intensity_scale_prob: probability of the intensity scaling.
        intensity_scale: largest relative intensity scaling.
        histogram_shift_prob: probability of the histogram shift.
        num_control_points: control points of the histogram shift.
        smooth_prob: probability of the Gaussian smoothing.
        smooth_sigma: (low, high) smoothing sigma in voxels.
    """

    crop_scale: tuple[float, float] = (0.33, 1.0)
    flip_prob: float = 0.5
    affine_prob: float = 0.2
    rotate_range: tuple[float, float, float] = (0.26, 0.05, 0.05)
    affine_scale: float = 0.1
    intensity_scale_prob: float = 0.5
    intensity_scale: float = 0.1
    histogram_shift_prob: float = 0.5
    num_control_points: int = 5
    smooth_prob: float = 0.5
    smooth_sigma: tuple[float, float] = (0.25, 1.5)


#: The defaults both view pipelines use.
VIEWS = ViewSettings()
