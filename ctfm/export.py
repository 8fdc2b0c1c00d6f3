"""Turn a training checkpoint into the Hub format that ``ctfm.load`` reads.

A Lightning checkpoint holds the whole Lighter module (network, heads, optimizer state) and, via lighter, the
config it was built from. Export finds the network worth publishing in that config (a distilled student, the
encoder inside a SimCLR network, or a fine-tuned SegResNetDS: ``model::network::student``, ``::encoder`` or
``model::network``),
rebuilds it from the config, so the exported ``config.json`` describes what was trained, and loads its weights
strictly from the matching ``state_dict`` prefix (``network.`` or ``network.encoder.``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from ctfm.errors import ModelLoadError

#: Where exportable networks sit in ctfm's recipes, tried in order (the first SegResEncoder/SegResNetDS wins): the
#: narrowest first, so exporting a distilled student never builds its teacher, nor SimCLR's encoder its head.
EXPORT_CANDIDATES = ("model::network::student", "model::network::encoder", "model::network")


def read_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise ModelLoadError(f"{path}: cannot be read as a PyTorch checkpoint: {err}") from err


def network_from_checkpoint(path: str | Path, config_key: str | None = None) -> nn.Module:
    """Rebuild the exportable network from a lighter checkpoint's saved config and load its weights strictly.

    ``config_key`` (e.g. ``model::network``) picks the network; by default the first of
    :data:`EXPORT_CANDIDATES` that is a SegResEncoder or SegResNetDS. A recipe's ``vars::weights`` (a pretrained
    start) is not fetched again: the checkpoint holds the trained weights.
    """
    from sparkwheel import Config

    from ctfm.hub.loading import load_state_dict_strict

    checkpoint = read_checkpoint(path)
    try:
        config = checkpoint["hyper_parameters"]["config"]
    except KeyError:
        raise ModelLoadError(
            f"{path}: has no lighter config in hyper_parameters; was it written by `lighter fit`?"
        ) from None
    parser = Config()
    parser.update(config)
    if "vars::weights" in parser:
        parser.set("vars::weights", None)
    key, network = _exportable(parser, [config_key] if config_key else EXPORT_CANDIDATES, path)
    prefix = key.removeprefix("model::").replace("::", ".") + "."
    state = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ModelLoadError(f"{path}: no weights under {prefix!r} for {key}")
    load_state_dict_strict(network, state, source=str(path))
    return network.eval()


def export_encoder(checkpoint: str | Path, out_dir: str | Path, *, config_key: str | None = None) -> Path:
    """Write the checkpoint's network as ``config.json`` + ``model.safetensors`` in ``out_dir``.

    Refuses (naming the tensors) weights holding NaN or inf, as every save in ctfm does.
    """
    from ctfm.hub.saving import save_pretrained

    return save_pretrained(network_from_checkpoint(checkpoint, config_key), out_dir)


def _exportable(parser, keys: Sequence[str], path: str | Path) -> tuple[str, nn.Module]:
    from ctfm.hub.registry import ARCHITECTURES

    architectures = tuple(ARCHITECTURES.values())
    for key in keys:
        if key not in parser:
            continue
        network = parser.resolve(key)
        if isinstance(network, architectures):
            return key, network
    raise ModelLoadError(
        f"{path}: found no {' or '.join(ARCHITECTURES)} at {', '.join(keys)} of its config; pass the config key "
        "of the network to export"
    )
