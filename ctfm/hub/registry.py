"""The one registry: the architectures a ``config.json`` may name, and the pretrained models known by name.

Like timm's pretrained configs, a model entry carries more than where its weights live: the preprocessing its
inputs need and what it outputs (an embedding width, or classes and their names), so ``ctfm embed`` and
``ctfm segment`` configure themselves from the name alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from monai.networks.nets.segresnet_ds import SegResEncoder, SegResNetDS
from torch import nn

from ctfm.data.classes import TOTALSEGMENTATOR_CLASSES
from ctfm.errors import ModelLoadError
from ctfm.nn.encoder import CT_FM_CONFIG
from ctfm.nn.fmcib import FMCIB_EMBEDDING_DIM, FMCIBResNet50
from ctfm.transforms.lesion_crop import CT_FM_CROP, FMCIB_CROP, LesionCrop
from ctfm.transforms.preprocess import PATCH_SIZE, CTPreprocessing

#: Key of ``config.json`` (and of the safetensors metadata) holding a saved model's input spec. Loaders of the
#: Hub format that build from constructor kwargs ignore keys their class does not take.
SPEC_KEY = "ctfm"
#: The Hub format: ``model.safetensors`` (+ ``config.json``), the only format ``save_pretrained`` writes.
SAFETENSORS = "safetensors"
#: How a model's published weights are stored; :data:`ctfm.hub.loading.FORMAT_LOADERS` reads the others.
#: ``fmcib-torch``: FMCIB's ``model_weights.torch`` (tensors only, read with ``weights_only=True``).
WEIGHT_FORMATS = (SAFETENSORS, "fmcib-torch")

#: Constructor of each architecture a ``config.json`` (or the safetensors metadata ctfm writes) may name.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "SegResEncoder": SegResEncoder,
    "SegResNetDS": SegResNetDS,
    # FMCIB's MONAI ResNet-50 (widen_factor 2, conv1_t_stride 2, no fc); its published weights are "fmcib-torch".
    "FMCIBResNet50": FMCIBResNet50,
}


def build_model(architecture: str, config: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``architecture`` from the constructor kwargs of a Hub ``config.json``."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return ARCHITECTURES[architecture](**kwargs)


@dataclass(frozen=True)
class ModelSpec:
    """A published model: its Hub repo, the network its files fit, its inputs and its outputs.

    Published ``config.json`` files carry constructor kwargs but no class name, hence ``architecture``;
    ``default_config`` is used only when the repo has no ``config.json``. ``preprocessing`` is what the model's
    inputs went through in training; ``embedding_dim`` is the width of its pooled encoder features, and
    ``classes`` names its output channels (background first) when it is a segmentation model. ``patch_size`` is
    the (z, y, x) input the model was trained on: the tile of tiled embedding, or the crop of a lesion model.
    ``lesion_crop`` is how ``ctfm features`` cuts a lesion for it (orientation, spacing, size, HU range, clipping),
    and ``weight_format`` how its published weights are stored (:data:`WEIGHT_FORMATS`), which the loader
    dispatches on.

    ``ctfm.load`` attaches the spec to the model it returns (``model.ctfm_spec``, read with :func:`spec_of`), the
    way timm attaches ``pretrained_cfg``, so ``embed``, ``segment`` and region embedding take their defaults from
    the model itself.
    """

    name: str
    repo_id: str
    architecture: str
    default_config: Mapping[str, Any]
    description: str
    preprocessing: CTPreprocessing = CTPreprocessing()
    embedding_dim: int | None = None
    classes: tuple[str, ...] | None = None
    patch_size: tuple[int, ...] = PATCH_SIZE
    lesion_crop: LesionCrop = CT_FM_CROP
    weight_format: str = SAFETENSORS

    def __post_init__(self) -> None:  # a private, read-only copy: specs must not share or change configs
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {', '.join(WEIGHT_FORMATS)}, got {self.weight_format!r}")
        object.__setattr__(self, "default_config", MappingProxyType(json.loads(json.dumps(dict(self.default_config)))))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))

    def input_spec(self) -> dict[str, Any]:
        """What the model expects and outputs, as plain JSON data (the ``"ctfm"`` key of a saved ``config.json``)."""
        pre, crop = self.preprocessing, self.lesion_crop
        return {
            "preprocessing": {
                "spacing": None if pre.spacing is None else list(pre.spacing),
                "hu_range": list(pre.hu_range),
                "crop_foreground": pre.crop_foreground,
                "body_threshold_hu": pre.body_threshold_hu,
            },
            "patch_size": list(self.patch_size),
            "embedding_dim": self.embedding_dim,
            "classes": None if self.classes is None else list(self.classes),
            "lesion_crop": {
                "orientation": crop.orientation,
                "spacing": list(crop.spacing),
                "size": list(crop.size),
                "hu_range": list(crop.hu_range),
                "clip": crop.clip,
            },
            "weight_format": self.weight_format,
        }


def spec_from_input_spec(data: Any, *, name: str, architecture: str, origin: str) -> ModelSpec:
    """The :class:`ModelSpec` of a saved model from its ``"ctfm"`` config entry: plain data, checked key by key.

    A key left out (a file saved before it existed) takes CT-FM's value.
    """

    def fail(key: str, expected: str) -> ModelLoadError:
        return ModelLoadError(f"{origin}: {SPEC_KEY}::{key} must be {expected}")

    def numbers(value: Any, key: str, length: int | None, kind: type = float) -> tuple:
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise fail(key, f"a list of {length or 'some'} numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise fail(key, "a list of numbers")
        return tuple(kind(v) for v in value)

    if not isinstance(data, dict):
        raise fail("", "a JSON object")
    pre = data.get("preprocessing", {})
    if not isinstance(pre, dict):
        raise fail("preprocessing", "a JSON object")
    spacing = pre.get("spacing", list(CTPreprocessing().spacing or ()))
    patch_size = numbers(data.get("patch_size", list(PATCH_SIZE)), "patch_size", 3, int)
    crop = pre.get("crop_foreground", True)
    threshold = pre.get("body_threshold_hu", CTPreprocessing().body_threshold_hu)
    if not isinstance(crop, bool):
        raise fail("preprocessing::crop_foreground", "true or false")
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise fail("preprocessing::body_threshold_hu", "a number")
    width = data.get("embedding_dim")
    if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width < 1):
        raise fail("embedding_dim", "a positive integer or null")
    classes = data.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise fail("classes", "a list of names or null")
    preprocessing = CTPreprocessing(
        spacing=None if spacing is None else numbers(spacing, "preprocessing::spacing", 3),
        hu_range=numbers(pre.get("hu_range", list(CTPreprocessing().hu_range)), "preprocessing::hu_range", 2),
        min_size=patch_size,
        crop_foreground=crop,
        body_threshold_hu=float(threshold),
    )
    crop = data.get("lesion_crop", {})
    if not isinstance(crop, dict):
        raise fail("lesion_crop", "a JSON object")
    orientation, clip = crop.get("orientation", CT_FM_CROP.orientation), crop.get("clip", CT_FM_CROP.clip)
    if not (isinstance(orientation, str) and len(orientation) == 3 and set(orientation.upper()) <= set("RLAPSI")):
        raise fail("lesion_crop::orientation", "three axis codes such as 'LPS'")
    if not isinstance(clip, bool):
        raise fail("lesion_crop::clip", "true or false")
    lesion_crop = LesionCrop(
        orientation.upper(),
        numbers(crop.get("spacing", list(CT_FM_CROP.spacing)), "lesion_crop::spacing", 3),
        numbers(crop.get("size", list(CT_FM_CROP.size)), "lesion_crop::size", 3, int),
        numbers(crop.get("hu_range", list(CT_FM_CROP.hu_range)), "lesion_crop::hu_range", 2),
        clip,
    )
    weight_format = data.get("weight_format", SAFETENSORS)
    if weight_format != SAFETENSORS:  # what save_pretrained writes, and what a saved folder holds
        raise fail("weight_format", f"{SAFETENSORS!r}, the format of the saved weights")
    names = None if classes is None else tuple(classes)
    return ModelSpec(
        name, "", architecture, {}, f"saved {architecture}", preprocessing, width, names, patch_size=patch_size,
        lesion_crop=lesion_crop, weight_format=weight_format,
    )  # fmt: skip


def spec_of(model: nn.Module) -> ModelSpec | None:
    """The spec ``ctfm.load`` attached to ``model``; ``None`` for a network built in code."""
    spec = getattr(model, "ctfm_spec", None)
    return spec if isinstance(spec, ModelSpec) else None


def attach_spec(model: nn.Module, spec: ModelSpec | None) -> nn.Module:
    """Give ``model`` its spec (``model.ctfm_spec``); returns the model."""
    if spec is not None:
        model.ctfm_spec = spec  # type: ignore[assignment]  # a plain attribute, not a submodule or buffer
    return model


_CT_FM_WIDTH = CT_FM_CONFIG["init_filters"] * 16

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "ct-fm",
            "project-lighter/ct_fm_feature_extractor",
            "SegResEncoder",
            CT_FM_CONFIG,
            "CT-FM encoder (SegResEncoder, 77.8M params): intra-sample SimCLR on 148k IDC CT scans; 512-d features",
            embedding_dim=_CT_FM_WIDTH,
        ),
        ModelSpec(
            "ct-fm-segresnet",
            "project-lighter/ct_fm_segresnet",
            "SegResNetDS",
            {**CT_FM_CONFIG, "out_channels": 2, "dsdepth": 1},
            "SegResNetDS with the CT-FM encoder (encoder.*) and an untrained decoder, for fine-tuning",
            embedding_dim=_CT_FM_WIDTH,
        ),
        ModelSpec(
            "ct-fm-whole-body",
            "project-lighter/whole_body_segmentation",
            "SegResNetDS",
            {**CT_FM_CONFIG, "out_channels": 118, "dsdepth": 4},
            "CT-FM SegResNetDS fine-tuned on TotalSegmentator v2: 117 structures + background",
            # The model card's inference pipeline does not resample.
            preprocessing=CTPreprocessing(spacing=None),
            embedding_dim=_CT_FM_WIDTH,
            classes=("background", *TOTALSEGMENTATOR_CLASSES),
            # The card's sliding window.
            patch_size=(96, 160, 160),
        ),
        ModelSpec(
            "fmcib",
            "surajpaib/FMCIB",
            "FMCIBResNet50",
            {},
            "FMCIB (Pai et al. 2024): 3D ResNet-50 (widen 2), SimCLR on 11k CT lesions; 4096-d lesion features",
            # FMCIB's inputs: 1 mm isotropic, 50 mm cubes around a seed point, (HU + 1024) / 3072 without clipping.
            preprocessing=CTPreprocessing(spacing=(1.0, 1.0, 1.0), min_size=(50, 50, 50)),
            embedding_dim=FMCIB_EMBEDDING_DIM,
            patch_size=FMCIB_CROP.size,
            lesion_crop=FMCIB_CROP,
            weight_format="fmcib-torch",
        ),
    )
}


def list_models() -> list[str]:
    """Names ``ctfm.load`` accepts besides paths and Hub repo ids.

    Returns:
        The registered model names; ``ctfm models`` prints them with their Hub repos and input specs.

    Examples:
        >>> import ctfm
        >>> "ct-fm" in ctfm.list_models()
        True
    """
    return list(MODELS)


def find_spec(source: str) -> ModelSpec | None:
    """The registry entry named ``source`` or published at the Hub repo ``source``."""
    return MODELS.get(source) or next((spec for spec in MODELS.values() if spec.repo_id == source), None)
