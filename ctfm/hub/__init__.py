"""Pretrained models by name: the registry, loading from disk or the Hugging Face Hub, and saving.

One module a job: :mod:`~ctfm.hub.registry` (names, architectures, what each model expects and outputs),
:mod:`~ctfm.hub.loading` (``load``), :mod:`~ctfm.hub.download` (the Hub and its cache), :mod:`~ctfm.hub.saving`
(``save_pretrained``), :mod:`~ctfm.hub.checkpoint` (Lightning checkpoints and the pretrained denoiser, read as
data through :mod:`~ctfm.hub.safe_config`).
"""

from ctfm.hub.loading import infer_config, load, load_state_dict_strict
from ctfm.hub.registry import ARCHITECTURES, MODELS, ModelSpec, build_model, list_models
from ctfm.hub.saving import save_pretrained

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "ModelSpec",
    "build_model",
    "infer_config",
    "list_models",
    "load",
    "load_state_dict_strict",
    "save_pretrained",
]
