"""Loading FMCIB's released weights: its own checkpoint layouts, read with ``torch.load(weights_only=True)``.

FMCIB publishes a torch file, not safetensors. ``weights_only=True`` unpickles tensors and plain containers only,
never code. Two layouts exist: ``{"trunk_state_dict": ...}`` (the released ``model_weights.torch``) and a Lighter
checkpoint whose ``state_dict`` holds the trunk under ``model.trunk.`` (its heads, if any, are left out). Loading
is strict: any missing, unexpected or mis-shaped key fails and is named.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctfm.errors import ModelLoadError
from ctfm.hub.download import _HubFetch, _offline_from_env
from ctfm.hub.weights import load_state_dict_strict, refuse_nonfinite
from ctfm.nn.fmcib import fmcib_resnet50

#: What FMCIB's maintainers publish: a Hub repo holding ``model_weights.torch``.
FMCIB_REPO = "surajpaib/FMCIB"
FMCIB_WEIGHTS_NAME = "model_weights.torch"
_LIGHTER_TRUNK = "model.trunk."


def fmcib_trunk_state(checkpoint: Any, *, source: str) -> dict[str, torch.Tensor]:
    """The trunk's tensors from either FMCIB layout."""
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("trunk_state_dict"), Mapping):
        return dict(checkpoint["trunk_state_dict"])
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if isinstance(state, Mapping) and any(str(k).startswith(_LIGHTER_TRUNK) for k in state):
        return {k[len(_LIGHTER_TRUNK) :]: v for k, v in state.items() if k.startswith(_LIGHTER_TRUNK)}
    keys = list(checkpoint)[:5] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
    raise ModelLoadError(
        f"{source}: not an FMCIB checkpoint: expected a 'trunk_state_dict', or a 'state_dict' with "
        f"'{_LIGHTER_TRUNK}*' keys; found {keys}"
    )


def read_fmcib_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: FMCIB weights not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        reason = " ".join(str(err).split())[:300]
        raise ModelLoadError(f"{path}: cannot be read as FMCIB weights with weights_only=True ({reason})") from err
    return fmcib_trunk_state(checkpoint, source=str(path))


def load_fmcib(
    path: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """FMCIB's ResNet-50 trunk in eval mode, from ``path`` or (``None``) the Hub repo :data:`FMCIB_REPO`."""

    if path is None:
        offline = local_files_only if local_files_only is not None else _offline_from_env()
        path = _HubFetch("fmcib", FMCIB_REPO, revision, cache_dir, offline)(FMCIB_WEIGHTS_NAME)
    state = read_fmcib_weights(path)
    refuse_nonfinite(state, source=str(path))
    model = load_state_dict_strict(fmcib_resnet50(), state, source=str(path))
    return model.to(device).eval()
