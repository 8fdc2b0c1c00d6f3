"""``ctfm.load``: a pretrained model from a registry name, a local folder or file, or a Hub repo id.

The on-disk format is the one ``huggingface_hub.PyTorchModelHubMixin`` publishes (``config.json`` holding the
constructor kwargs, ``model.safetensors``), so the public CT-FM repos load as they are. Weights are read with
safetensors only: nothing that comes from disk or the network is ever unpickled. Loading is strict, and weights
holding NaN or inf (a diverged training run) are refused by name.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ctfm.errors import ModelLoadError
from ctfm.hub.download import hub_files
from ctfm.hub.fmcib import load_fmcib
from ctfm.hub.format import ARCHITECTURE_KEY, CONFIG_NAME, WEIGHTS_NAME, read_config
from ctfm.hub.registry import (
    ARCHITECTURES,
    MODELS,
    SAFETENSORS,
    SPEC_KEY,
    ModelSpec,
    attach_spec,
    build_model,
    find_spec,
    spec_from_input_spec,
)
from ctfm.hub.weights import listing, load_state_dict_strict, nonfinite_tensors, refuse_nonfinite

__all__ = ["infer_config", "listing", "load", "load_state_dict_strict", "nonfinite_tensors", "refuse_nonfinite"]

_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_WEIGHT_SUFFIXES = (".safetensors", *_PICKLE_SUFFIXES)
#: Each weight format besides safetensors (:data:`ctfm.hub.registry.WEIGHT_FORMATS`) and its loader: a local path
#: or ``None`` (the spec's Hub repo) -> the network in eval mode. Each reads its own layout without running code.
FORMAT_LOADERS: dict[str, Callable[..., nn.Module]] = {"fmcib-torch": load_fmcib}
#: A local weights file that is not safetensors, by suffix, and the registry entry whose spec (weight format
#: included) it loads with: FMCIB's released ``model_weights.torch``.
LOCAL_SUFFIXES = {".torch": "fmcib"}


def load(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A pretrained model in eval mode, from a registry name, a local path or a Hub repo id.

    Resolution order: a name in ``MODELS``; an existing path (a directory with ``model.safetensors`` and optionally
    ``config.json``, or a single ``.safetensors`` file); otherwise an ``org/name`` Hugging Face repo id.
    ``revision``, ``cache_dir`` and ``local_files_only`` apply to Hub downloads; ``local_files_only=None`` follows
    ``HF_HUB_OFFLINE``. The architecture comes from the registry, else an ``"architecture"`` key in the config or
    the safetensors metadata ctfm writes, else the weights' key names (see ``infer_config``).

    Loading is strict: any key or shape mismatch raises ``ModelLoadError`` naming the keys, and so do weights
    holding NaN or inf. With an unreachable Hub and an empty cache it fails after one attempt (at most
    ``HF_HUB_ETAG_TIMEOUT``, 10 s, never huggingface_hub's retries) with a ``ModelLoadError`` saying how to
    provide the files.

    Args:
        name_or_path: a registry name (``ctfm.list_models()``, e.g. ``"ct-fm"``), a folder written by
            :func:`~ctfm.hub.saving.save_pretrained`, a ``.safetensors`` file, or a Hub repo id ``org/name``.
        revision: the Hub branch, tag or commit to download; pin a commit for reproducible runs.
        cache_dir: where Hub downloads are kept (default huggingface_hub's cache).
        local_files_only: use only files already in the cache (offline machines); ``None`` follows
            ``HF_HUB_OFFLINE``.
        device: where the model is placed, e.g. ``"cuda"``.

    Returns:
        The network in eval mode on ``device``, carrying its input spec (patch size, preprocessing) when the
        registry or the files name one, which :func:`ctfm.embed` and :func:`ctfm.segment` then use.

    Examples:
        The hub name ``"ct-fm"`` downloads the published encoder; a folder written by ``save_pretrained`` loads
        the same way, offline:

        >>> import tempfile, ctfm
        >>> from ctfm.nn import ct_fm_encoder
        >>> folder = ctfm.save_pretrained(ct_fm_encoder(init_filters=4), tempfile.mkdtemp())
        >>> model = ctfm.load(folder)
        >>> type(model).__name__, model.training
        ('SegResEncoder', False)
        >>> model = ctfm.load("ct-fm")  # doctest: +SKIP
    """
    source = str(name_or_path)
    spec = find_spec(source)
    path = Path(source).expanduser()
    local = None
    if spec is None and path.suffix in LOCAL_SUFFIXES:
        spec, local = MODELS[LOCAL_SUFFIXES[path.suffix]], path
    if spec is not None and spec.weight_format != SAFETENSORS:
        model = FORMAT_LOADERS[spec.weight_format](
            local, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, device=device
        )
        return attach_spec(model, spec)
    if spec is None and path.exists():
        weights, config = _local_files(path)
    elif spec is not None or (_REPO_ID.fullmatch(source) and path.suffix not in _WEIGHT_SUFFIXES):
        weights, config = hub_files(
            spec, source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
    else:
        raise ModelLoadError(
            f"{source}: no such file or directory, not a model name ({', '.join(MODELS)}) and not a Hub repo id"
        )
    tensors, metadata = _read_weights(weights)
    refuse_nonfinite(tensors, source=str(weights))
    config, saved_spec = _split_spec(config, metadata, weights)
    architecture, kwargs = _resolve_architecture(spec, config, metadata, tensors, weights)
    model = _instantiate(architecture, kwargs, tensors, str(weights)).to(device).eval()
    if spec is None and saved_spec is not None:
        spec = spec_from_input_spec(saved_spec, name=source, architecture=architecture, origin=str(weights))
    return attach_spec(model, spec)


def infer_config(shapes: Mapping[str, Sequence[int]]) -> tuple[str, dict[str, Any]]:
    """Architecture and constructor kwargs read off state-dict key names and tensor shapes.

    ``conv_init.weight`` (out, in, *kernel) gives ``init_filters``, ``in_channels`` and ``spatial_dims``; the
    ``layers.{i}.blocks.{j}`` keys give ``blocks_down``. With ``up_layers.*`` keys beside an ``encoder.`` it is a
    SegResNetDS: ``blocks_up`` from ``up_layers.{i}.blocks.{j}``, ``out_channels`` from the deep-supervision
    ``head`` weights and ``dsdepth`` from how many levels have one. Non-default act/norm, anisotropic kernels or
    upsample modes are not visible here: such weights need a config, or the strict load reports the mismatch.
    """
    stem = next((key for key in shapes if key == "conv_init.weight" or key.endswith(".conv_init.weight")), None)
    if stem is None:
        raise ModelLoadError("no conv_init.weight among the weights: not a SegResNet-family checkpoint")
    prefix = stem[: -len("conv_init.weight")]
    init_filters, in_channels, *kernel = shapes[stem]
    config: dict[str, Any] = {
        "spatial_dims": len(kernel),
        "in_channels": in_channels,
        "init_filters": init_filters,
        "blocks_down": _block_counts(shapes, prefix + "layers"),
    }
    root = prefix[: -len("encoder.")] if prefix.endswith("encoder.") else None
    if root is None or not any(key.startswith(root + "up_layers.") for key in shapes):
        return "SegResEncoder", config
    blocks_up = _block_counts(shapes, root + "up_layers")
    heads = [shapes[key] for i in range(len(blocks_up)) if (key := f"{root}up_layers.{i}.head.weight") in shapes]
    if not heads:
        raise ModelLoadError("SegResNetDS weights without any up_layers.*.head: cannot tell out_channels")
    return "SegResNetDS", {**config, "blocks_up": blocks_up, "out_channels": heads[-1][0], "dsdepth": len(heads)}


def _local_files(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """Weights file and optional config of a local directory or file; pickle formats are refused by name."""
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            found = f" (found {', '.join(pickled)}: pickle formats are not read)" if pickled else ""
            raise ModelLoadError(f"{path}: no {WEIGHTS_NAME}{found}; ctfm reads weights from safetensors only")
        config_path = path / CONFIG_NAME
        return weights, read_config(config_path) if config_path.is_file() else None
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"{path}: not a .safetensors file or model directory; ctfm reads weights from safetensors only "
            "(pickle files can run code): export a checkpoint with `ctfm export` or safetensors.torch.save_file"
        )
    return path, None


def _split_spec(
    config: dict[str, Any] | None, metadata: Mapping[str, str], origin: Path
) -> tuple[dict[str, Any] | None, Any]:
    """The constructor kwargs without the ``"ctfm"`` input spec, and that spec (from config.json or the metadata)."""
    if config is None and "config" in metadata:
        try:
            config = dict(json.loads(metadata["config"]))
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"{origin}: unreadable config in the safetensors metadata ({err})") from err
    if config is None or SPEC_KEY not in config:
        return config, None
    config = dict(config)
    return config, config.pop(SPEC_KEY)


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()  # a safe_open handle is not iterable itself
            return {key: handle.get_tensor(key) for key in names}, dict(handle.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({err})") from err


def _resolve_architecture(
    spec: ModelSpec | None,
    config: dict[str, Any] | None,
    metadata: Mapping[str, str],
    tensors: Mapping[str, torch.Tensor],
    origin: Path,
) -> tuple[str, dict[str, Any]]:
    """Precedence: registry, then ``config`` (``config.json``, else the file's metadata: see :func:`_split_spec`),
    then inference from the weights."""
    if config is None and spec is not None:
        config = dict(spec.default_config)
    shapes = {key: tuple(value.shape) for key, value in tensors.items()}
    if config is None:
        try:
            return infer_config(shapes)
        except ModelLoadError as err:
            raise ModelLoadError(f"{origin}: no config.json and {err}") from err
    config = dict(config)
    named = config.pop(ARCHITECTURE_KEY, None) or metadata.get(ARCHITECTURE_KEY)
    architecture = spec.architecture if spec is not None else named
    if architecture is None:
        # Published configs are constructor kwargs: only the segmentation network takes ``out_channels``.
        architecture = "SegResNetDS" if "out_channels" in config else "SegResEncoder"
    if architecture not in ARCHITECTURES:
        raise ModelLoadError(f"{origin}: unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return architecture, config


def _instantiate(architecture: str, config: dict[str, Any], tensors: dict[str, torch.Tensor], origin: str) -> nn.Module:
    """Build on the meta device and adopt copies of the loaded tensors: no random init of weights to be replaced."""
    try:
        with torch.device("meta"):
            model = build_model(architecture, config)
    except (TypeError, ValueError, LookupError) as err:
        raise ModelLoadError(f"{origin}: config {config} does not build a {architecture}: {err}") from err
    load_state_dict_strict(model, tensors, source=origin, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # A buffer outside the state dict (persistent=False) has no value to adopt: build for real.
        model = load_state_dict_strict(build_model(architecture, config), tensors, source=origin)
    return model


def _block_counts(shapes: Mapping[str, Sequence[int]], group: str) -> list[int]:
    pattern = re.compile(re.escape(group) + r"\.(\d+)\.blocks\.(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for key in shapes:
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    return [len(blocks.get(level, ())) for level in range(max(blocks, default=-1) + 1)]
