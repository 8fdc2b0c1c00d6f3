"""Turn a pretraining checkpoint into the Hub format that ``ctfm.load`` reads.

A Lightning checkpoint holds the whole SimCLR module (encoder, projection head, optimizer state) and, via lighter,
the config it was built from. Export rebuilds the encoder from that config, so the exported ``config.json`` always
describes the trained architecture, and keeps only the encoder's weights under the published key names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ctfm.errors import ModelLoadError

ENCODER_PREFIX = "network.encoder."
ENCODER_CONFIG_KEY = "model::network::encoder"


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ModelLoadError(f"{path}: cannot be read as a PyTorch checkpoint: {err}") from err


def encoder_from_checkpoint(path: str | Path) -> nn.Module:
    """Rebuild the pretrained encoder from a lighter checkpoint's saved config and load its weights strictly."""
    from sparkwheel import Config

    from ctfm.hub import load_state_dict_strict

    checkpoint = read_checkpoint(path)
    try:
        config = checkpoint["hyper_parameters"]["config"]
    except KeyError:
        raise ModelLoadError(
            f"{path}: has no lighter config in hyper_parameters; was it written by `lighter fit`?"
        ) from None
    parser = Config()
    parser.update(config)
    encoder = parser.resolve(ENCODER_CONFIG_KEY)
    state = {k[len(ENCODER_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(ENCODER_PREFIX)}
    if not state:
        raise ModelLoadError(f"{path}: no weights under {ENCODER_PREFIX!r}; is it a ctfm pretraining checkpoint?")
    load_state_dict_strict(encoder, state, source=str(path))
    return encoder.eval()


def export_encoder(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write the checkpoint's encoder as ``config.json`` + ``model.safetensors`` in ``out_dir``."""
    from ctfm.hub import save_pretrained

    return save_pretrained(encoder_from_checkpoint(checkpoint), out_dir)
