"""Lightning checkpoints read as data: the file itself, and the denoiser of a diffusion pretraining run.

``torch.load`` runs with ``weights_only=True``, so a checkpoint cannot unpickle objects; the network is rebuilt from
the config lighter stored in it through :mod:`ctfm.hub.safe_config` (allowed network classes only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctfm.errors import CTFMError, ModelLoadError
from ctfm.hub.loading import refuse_nonfinite
from ctfm.hub.safe_config import has_key, plain, rebuild, stored_config
from ctfm.nn.diffusion.network import WindowConditionedUNet


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint without unpickling arbitrary objects.

    Args:
        path: the ``.ckpt`` file.

    Returns:
        The checkpoint's dictionary (``state_dict``, ``hyper_parameters``, ...), tensors on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ModelLoadError(f"{path}: cannot be read as a PyTorch checkpoint: {err}") from err


#: The recipe ``vars`` that :func:`load_denoiser` reads back (as data) for sampling.
_SAMPLING_VARS = ("image_size", "spacing")


def load_denoiser(
    checkpoint: str | Path, spatial_dims: int | None = None, ema: bool = False
) -> tuple[WindowConditionedUNet, dict[str, Any]]:
    """The denoiser of a pretraining checkpoint (its EMA weights with ``ema``) and the recipe's ``vars``.

    The network is rebuilt from the config lighter saved in the checkpoint, read as data
    (:func:`ctfm.hub.safe_config.rebuild`); a checkpoint of another dimension than ``spatial_dims``, whose weights do
    not fit its own config or hold NaN or inf, is refused with one line before anything runs. Of ``vars`` only those
    sampling needs (image_size, spacing) are returned.

    Args:
        checkpoint: a diffusion pretraining checkpoint (``last.ckpt``).
        spatial_dims: 2 or 3 to refuse a checkpoint of the other dimension; None takes what it holds.
        ema: read the EMA weights (pretrained with ``vars::ema_decay``) instead of the trained ones.

    Returns:
        The denoiser in eval mode, and the recipe's ``image_size`` and ``spacing`` where it stored them.
    """
    state = read_checkpoint(checkpoint)
    config = stored_config(state, str(checkpoint))
    network = rebuild(config, "model::network", source=str(checkpoint)) if has_key(config, "model::network") else None
    if not isinstance(network, WindowConditionedUNet):
        raise CTFMError(f"{checkpoint}: model::network is not a diffusion denoiser (ctfm.nn.diffusion)")
    prefix = "ema_network.module." if ema else "network."
    weights = {k[len(prefix) :]: v for k, v in (state.get("state_dict") or {}).items() if k.startswith(prefix)}
    if not weights:
        hint = " (trained without vars::ema_decay)" if ema else ""
        raise CTFMError(f"{checkpoint}: no weights under {prefix!r}{hint}")
    refuse_nonfinite(weights, source=str(checkpoint))
    stored_dims = weights["unet.conv_in.conv.weight"].ndim - 2
    if spatial_dims is not None and stored_dims != spatial_dims:
        raise CTFMError(f"{checkpoint}: holds a {stored_dims}D denoiser, but spatial_dims is {spatial_dims}")
    if stored_dims != network.spatial_dims:
        raise CTFMError(
            f"{checkpoint}: its weights are {stored_dims}D but its config builds a {network.spatial_dims}D net"
        )
    missing, unexpected = network.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CTFMError(
            f"{checkpoint}: weights do not match the network: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    variables = {
        name: plain(config, f"vars::{name}", source=str(checkpoint))
        for name in _SAMPLING_VARS
        if has_key(config, f"vars::{name}")
    }
    return network.eval(), {name: value for name, value in variables.items() if value is not None}


def pretrained_denoiser(checkpoint: str | Path | None, spatial_dims: int, ema: bool = False) -> WindowConditionedUNet:
    """The frozen denoiser the diffusion adapters read: :func:`load_denoiser` without the ``vars``.

    Args:
        checkpoint: a diffusion pretraining checkpoint (``last.ckpt``); None is refused with the var to set.
        spatial_dims: 2 or 3; a checkpoint of the other dimension is refused.
        ema: read the EMA weights (pretrained with ``vars::ema_decay``).

    Returns:
        The denoiser in eval mode.
    """
    if checkpoint is None:
        raise CTFMError("no pretrained denoiser given: set vars::checkpoint=path/to/pretrain/last.ckpt")
    return load_denoiser(checkpoint, spatial_dims=spatial_dims, ema=ema)[0]
