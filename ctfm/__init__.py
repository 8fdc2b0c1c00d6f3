"""ctfm: native-3D contrastive CT foundation models.

``import ctfm`` is light: torch, MONAI and the rest load on first use of the attribute that needs them.

    import ctfm
    model = ctfm.load("ct-fm")                 # or a directory / .safetensors file
    vector = ctfm.embed(model, "scan.nii.gz")  # 512-d embedding of the whole scan
"""

from __future__ import annotations

from typing import Any

from ctfm.lazy import lazy_attribute, lazy_dir

__version__ = "0.1.0"

_LAZY = {
    "load": "ctfm.hub.loading",
    "list_models": "ctfm.hub.registry",
    "save_pretrained": "ctfm.hub.saving",
    "embed": "ctfm.embedding",
    "embed_patches": "ctfm.embedding",
    "embed_regions": "ctfm.embedding",
    "segment": "ctfm.segmentation",
    "CTPreprocessing": "ctfm.transforms.preprocess",
    "read_ct": "ctfm.io.reader",
    "export_encoder": "ctfm.export",
    "lesion_crop": "ctfm.analysis.lesions",
    "recipes_dir": "ctfm.recipes",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)


def __dir__() -> list[str]:
    return lazy_dir(__name__, _LAZY)
