"""Turn a training checkpoint into the Hub format that ``ctfm.load`` reads.

A Lightning checkpoint holds the whole Lighter module (network, heads, optimizer state) and, via lighter, the
config it was built from. Export finds the network worth publishing in that config (a distilled student, the
encoder inside a SimCLR network, or a fine-tuned SegResNetDS: ``model::network::student``, ``::encoder`` or
``model::network``),
rebuilds it from the config, so the exported ``config.json`` describes what was trained, and loads its weights
strictly from the matching ``state_dict`` prefix (``network.`` or ``network.encoder.``). The config is read as data
(:mod:`ctfm.hub.safe_config`): a checkpoint cannot make export import or run anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import ModelLoadError
from ctfm.hub.checkpoint import read_checkpoint

#: Where exportable networks sit in ctfm's recipes, tried in order (the first SegResEncoder/SegResNetDS wins): the
#: narrowest first, so exporting a distilled student never builds its teacher, nor SimCLR's encoder its head.
EXPORT_CANDIDATES = ("model::network::student", "model::network::encoder", "model::network")
#: Where the segmentation recipes compute their class names.
CLASS_NAMES_KEY = "model::class_names"


def network_from_checkpoint(path: str | Path, config_key: str | None = None) -> nn.Module:
    """Rebuild the exportable network from a lighter checkpoint's saved config and load its weights strictly.

    ``config_key`` (e.g. ``model::network``) picks the network; by default the first of
    :data:`EXPORT_CANDIDATES` that is a SegResEncoder or SegResNetDS. The stored config is read as data
    (:func:`ctfm.hub.safe_config.rebuild`: allowed network classes only, nothing evaluated or imported by name); a
    recipe's ``vars::weights`` (a pretrained start) is not fetched again: the checkpoint holds the trained weights.
    """
    return _exported(path, config_key)[0]


def export_encoder(checkpoint: str | Path, out_dir: str | Path, *, config_key: str | None = None) -> Path:
    """Write the checkpoint's network as ``config.json`` + ``model.safetensors`` in ``out_dir``.

    A segmentation network whose checkpoint names its classes also gets ``classes.json`` (the names, background
    first), which ``ctfm segment`` reads. Refuses (naming the tensors) weights holding NaN or inf, as every save in
    ctfm does.

    Args:
        checkpoint: a Lightning ``.ckpt`` written by a ctfm recipe (it stores the recipe's config).
        out_dir: the folder for ``config.json`` + ``model.safetensors`` (+ ``classes.json``).
        config_key: where the network sits in the recipe, e.g. ``model::network``; by default the first of
            :data:`EXPORT_CANDIDATES` that holds a CT-FM encoder or SegResNetDS.

    Returns:
        ``out_dir``, which :func:`ctfm.load` reads.

    Examples:
        A checkpoint as a pretraining run leaves it (the recipe's config and the module's weights):

        >>> import tempfile, torch, ctfm
        >>> from ctfm.nn import ct_fm_encoder
        >>> folder = tempfile.mkdtemp()
        >>> weights = {f"network.{k}": v for k, v in ct_fm_encoder(init_filters=4).state_dict().items()}
        >>> config = {"model": {"network": {"_target_": "ctfm.nn.ct_fm_encoder", "init_filters": 4}}}
        >>> torch.save({"state_dict": weights, "hyper_parameters": {"config": config}}, folder + "/last.ckpt")
        >>> exported = ctfm.export_encoder(folder + "/last.ckpt", folder + "/encoder")
        >>> type(ctfm.load(exported)).__name__
        'SegResEncoder'
    """
    from ctfm.hub.format import CLASSES_FILE
    from ctfm.hub.saving import save_pretrained

    network, class_names = _exported(checkpoint, config_key)
    folder = save_pretrained(network, out_dir)
    if class_names is not None:
        document = json.dumps(list(class_names), indent=2) + "\n"
        write_atomically(folder / CLASSES_FILE, lambda tmp: tmp.write_text(document))
    return folder


def _exported(path: str | Path, config_key: str | None) -> tuple[nn.Module, tuple[str, ...] | None]:
    """The exportable network with its weights, and its class names when it is a segmentation network."""
    from monai.networks.nets.segresnet_ds import SegResNetDS

    from ctfm.hub.loading import load_state_dict_strict
    from ctfm.hub.safe_config import stored_config

    checkpoint = read_checkpoint(path)
    config = stored_config(checkpoint, str(path))
    class_names = _class_names(checkpoint, config, str(path))
    known = {CLASS_NAMES_KEY: list(class_names)} if class_names is not None else {}
    key, network = _exportable(config, [config_key] if config_key else EXPORT_CANDIDATES, str(path), known)
    prefix = key.removeprefix("model::").replace("::", ".") + "."
    state = {k[len(prefix) :]: v for k, v in (checkpoint.get("state_dict") or {}).items() if k.startswith(prefix)}
    if not state:
        raise ModelLoadError(f"{path}: no weights under {prefix!r} for {key}")
    load_state_dict_strict(network, state, source=str(path))
    if not isinstance(network, SegResNetDS) or class_names is None:
        return network.eval(), None
    if len(class_names) != network.out_channels:
        raise ModelLoadError(
            f"{path}: names {len(class_names)} classes for a network of {network.out_channels} output channels"
        )
    return network.eval(), class_names


def _class_names(checkpoint: dict, config: dict, source: str) -> tuple[str, ...] | None:
    """The output channel names a segmentation checkpoint holds (``SegmentationModule`` stores them beside its
    state), else those its config's ``model::class_names`` computes from data, else None."""
    from ctfm.hub.safe_config import CLASS_NAME_TARGETS, CLASS_NAMES_CHECKPOINT_KEY, has_key, rebuild

    names = checkpoint.get(CLASS_NAMES_CHECKPOINT_KEY)
    if names is None and has_key(config, CLASS_NAMES_KEY):
        names = rebuild(config, CLASS_NAMES_KEY, source=source, extra_targets=CLASS_NAME_TARGETS)
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise ModelLoadError(f"{source}: its class names are not a list of strings: {names!r:.80}")
    return tuple(names)


def _exportable(config: dict, keys: Sequence[str], source: str, known: dict[str, Any]) -> tuple[str, nn.Module]:
    from ctfm.hub.registry import ARCHITECTURES
    from ctfm.hub.safe_config import has_key, rebuild

    architectures = tuple(ARCHITECTURES.values())
    for key in keys:
        if not has_key(config, key):
            continue
        network = rebuild(config, key, source=source, known=known)
        if isinstance(network, architectures):
            return key, network
    raise ModelLoadError(
        f"{source}: found no {' or '.join(ARCHITECTURES)} at {', '.join(keys)} of its config; pass the config key "
        "of the network to export"
    )
