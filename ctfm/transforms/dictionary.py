"""Dictionary forms of ctfm's transforms (MONAI's ``array.py`` / ``dictionary.py`` split).

:class:`CTPreprocessingd` is the canonical preprocessing of :class:`~ctfm.transforms.preprocess.CTPreprocessing`,
built from the same frozen settings, applied to a dict: label maps follow the image through orientation, spacing
(nearest neighbour) and the body crop, and every step is recorded, so ``monai.transforms.Invertd`` puts a
prediction back on the input's grid.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, cast

from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from ctfm.io.reader import read_label_map
from ctfm.transforms.preprocess import RAS_LABELS, AboveThreshold, CTPreprocessing, LoadCT


class LoadCTd(MapTransform):
    """Reads ``image_key`` as a checked HU scan and each of ``label_keys`` as a label map on that scan's grid.

    Paths become MetaTensors; MetaTensors pass through (a label map given in memory is still checked against
    the scan's grid). Errors name the file.

    Args:
        image_key: the key of the CT (a path or an HU MetaTensor).
        label_keys: keys of label maps that must lie on the CT's grid (same shape and affine); missing keys are
            skipped, so one pipeline serves labelled and unlabelled items.
        check_hu: refuse CTs whose values are clearly not HU.
    """

    def __init__(self, image_key: str = "image", label_keys: Sequence[str] = (), check_hu: bool = True):
        super().__init__([image_key, *label_keys], allow_missing_keys=True)
        self.image_key = image_key
        self.label_keys = tuple(label_keys)
        self.load_image = LoadCT(check_hu=check_hu)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = out[self.image_key] = self.load_image(out[self.image_key])
        for key in self.label_keys:
            if key not in out:
                continue
            value = out[key]
            if isinstance(value, MetaTensor):
                from ctfm.io.reader import check_same_grid

                labels = value if value.ndim == 4 else cast(MetaTensor, value[None])
                check_same_grid(image, labels, labels.meta.get("filename_or_obj", str(key)))
                out[key] = labels.float()
            else:
                out[key] = read_label_map(value, like=image)
        return out


class CTPreprocessingd(Compose):
    """The canonical preprocessing for ``{"image": ..., "label": ...}`` dicts, invertible with ``Invertd``.

    Args:
        settings: the frozen :class:`CTPreprocessing` (spacing, HU range, body threshold, minimum size).
        image_key: the CT (path or HU MetaTensor).
        label_keys: label maps on the CT's grid; resampled with nearest neighbour, padded with 0 (background).
        load: read paths first (``False`` when the dict already holds MetaTensors from elsewhere).

    Loading happens before the MONAI ``Compose`` runs, so a bad file raises ``InvalidScanError`` naming it rather
    than MONAI's "applying transform" wrapper.
    """

    def __init__(
        self,
        settings: CTPreprocessing = CTPreprocessing(),
        image_key: str = "image",
        label_keys: Sequence[str] = (),
        load: bool = True,
    ):
        keys = [image_key, *label_keys]
        modes = ["bilinear", *("nearest" for _ in label_keys)]
        low, high = settings.hu_range
        steps: list[Any] = [Orientationd(keys=keys, axcodes="SPL", labels=RAS_LABELS)]
        if settings.spacing is not None:
            steps.append(Spacingd(keys=keys, pixdim=settings.spacing, mode=modes, padding_mode="border"))
        steps.append(ScaleIntensityRanged(keys=image_key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
        if settings.crop_foreground:
            steps.append(
                CropForegroundd(
                    keys=keys,
                    source_key=image_key,
                    select_fn=AboveThreshold(settings.body_threshold),
                    allow_smaller=True,
                )
            )
        steps.append(SpatialPadd(keys=keys, spatial_size=settings.min_size, mode="constant", value=0.0))
        super().__init__(steps)
        self.settings = settings
        self.loader = LoadCTd(image_key, label_keys, check_hu=settings.check_hu) if load else None

    def __call__(self, data: Mapping[Hashable, Any], *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if self.loader is not None:
            data = self.loader(data)
        return super().__call__(data, *args, **kwargs)
