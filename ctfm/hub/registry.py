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
from ctfm.nn.encoder import CT_FM_CONFIG
from ctfm.nn.fmcib import FMCIB_EMBEDDING_DIM, FMCIBResNet50
from ctfm.transforms.preprocess import CTPreprocessing

#: Constructor of each architecture a ``config.json`` (or the safetensors metadata ctfm writes) may name.
ARCHITECTURES: dict[str, type[nn.Module]] = {
    "SegResEncoder": SegResEncoder,
    "SegResNetDS": SegResNetDS,
    # FMCIB's MONAI ResNet-50 (widen_factor 2, conv1_t_stride 2, no fc); its weights load through ctfm.hub.fmcib.
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
    ``classes`` names its output channels (background first) when it is a segmentation model.
    """

    name: str
    repo_id: str
    architecture: str
    default_config: Mapping[str, Any]
    description: str
    preprocessing: CTPreprocessing = CTPreprocessing()
    embedding_dim: int | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:  # a private, read-only copy: specs must not share or change configs
        object.__setattr__(self, "default_config", MappingProxyType(json.loads(json.dumps(dict(self.default_config)))))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))


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
        ),
        ModelSpec(
            "fmcib",
            "surajpaib/FMCIB",
            "FMCIBResNet50",
            {},
            "FMCIB (Pai et al. 2024): 3D ResNet-50 (widen 2), SimCLR on 11k CT lesions; 4096-d lesion features",
            # FMCIB's inputs: 1 mm isotropic, 50 mm cubes around a seed point, (HU + 1024) / 3072 without clipping;
            # ctfm.analysis.lesions applies exactly that for --model fmcib.
            preprocessing=CTPreprocessing(spacing=(1.0, 1.0, 1.0), min_size=(50, 50, 50)),
            embedding_dim=FMCIB_EMBEDDING_DIM,
        ),
    )
}


def list_models() -> list[str]:
    """Names ``ctfm.load`` accepts besides paths and Hub repo ids."""
    return list(MODELS)


def find_spec(source: str) -> ModelSpec | None:
    """The registry entry named ``source`` or published at the Hub repo ``source``."""
    return MODELS.get(source) or next((spec for spec in MODELS.values() if spec.repo_id == source), None)
