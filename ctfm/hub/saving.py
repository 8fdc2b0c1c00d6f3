"""``save_pretrained``: a model as ``config.json`` + ``model.safetensors``, the format ``ctfm.load`` reads.

``config.json`` holds the constructor kwargs only, exactly like the published repos (so ``PyTorchModelHubMixin``
loaders read it too); the architecture name and the config also go into the safetensors metadata, so the weights
file alone loads. A directory written here can be uploaded as a Hub repo as it is.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import ModelLoadError
from ctfm.hub.format import ARCHITECTURE_KEY, CONFIG_NAME, WEIGHTS_NAME
from ctfm.hub.registry import ARCHITECTURES, SAFETENSORS, SPEC_KEY, build_model, spec_of
from ctfm.hub.weights import listing, refuse_nonfinite


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` (each atomically) so that ``load`` rebuilds it.

    ``config`` (constructor kwargs) is derived from the attributes the MONAI class stores when not given; either
    way it must rebuild a network with exactly the model's state-dict keys and shapes. ``config.json`` holds the
    constructor kwargs only, exactly like the published repos (so ``PyTorchModelHubMixin`` loaders read it too);
    the architecture name and the config also go into the safetensors metadata, so the weights file alone loads.
    A model that carries an input spec (``ctfm.load`` attaches one) keeps it under the ``"ctfm"`` key, which
    constructor-kwarg loaders ignore. Weights holding NaN or inf are refused (nothing is written).

    Args:
        model: a network of an architecture ``ctfm.load`` knows (the CT-FM encoder, SegResNetDS, ...).
        directory: the folder to write into; created if missing, the two files in it replaced.
        config: the constructor kwargs, when the model does not store them as attributes (optionally with an
            ``"architecture"`` key naming the class).

    Returns:
        ``directory``, ready for :func:`ctfm.load` or an upload as a Hub repo.

    Examples:
        >>> import tempfile, ctfm
        >>> from ctfm.nn import ct_fm_encoder
        >>> folder = ctfm.save_pretrained(ct_fm_encoder(init_filters=4), tempfile.mkdtemp())
        >>> sorted(path.name for path in folder.iterdir())
        ['config.json', 'model.safetensors']
    """
    kwargs = dict(config) if config is not None else {}
    architecture = kwargs.pop(ARCHITECTURE_KEY, None) or _architecture_of(model)
    if config is None:
        kwargs = _derive_config(model, architecture)
    kwargs = _jsonable(kwargs, what=f"config of {type(model).__name__}")
    _check_rebuilds(model, architecture, kwargs)
    spec = spec_of(model)
    if spec is not None:  # the files written here are safetensors, whatever the model was first loaded from
        kwargs[SPEC_KEY] = replace(spec, weight_format=SAFETENSORS).input_spec()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    refuse_nonfinite(tensors, source=f"cannot save {type(model).__name__} to {directory}")
    metadata = {"format": "pt", ARCHITECTURE_KEY: architecture, "config": json.dumps(kwargs, sort_keys=True)}
    write_atomically(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    document = json.dumps(kwargs, indent=2, sort_keys=True) + "\n"
    write_atomically(directory / CONFIG_NAME, lambda tmp: tmp.write_text(document))
    return directory


def _architecture_of(model: nn.Module) -> str:
    exact = [name for name, cls in ARCHITECTURES.items() if type(model) is cls]
    related = [name for name, cls in ARCHITECTURES.items() if isinstance(model, cls)]
    if not (exact or related):
        raise ModelLoadError(
            f"cannot save a {type(model).__name__}: save_pretrained writes {', '.join(ARCHITECTURES)} models"
        )
    return (exact or related)[0]


def _derive_config(model: nn.Module, architecture: str) -> dict[str, Any]:
    """Constructor kwargs from the attributes the class stores under the same names (MONAI's networks keep them).

    Everything found is written, defaults included, so a later change of MONAI's defaults cannot change what the
    file means; only arguments left at a ``None`` default are omitted. Whatever is not stored (SegResNetDS's
    ``upsample_mode``, say) must be at its default, which ``_check_rebuilds`` verifies from the weights' shapes.
    """
    kwargs: dict[str, Any] = {}
    for parameter in inspect.signature(ARCHITECTURES[architecture]).parameters.values():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        if not hasattr(model, parameter.name):
            if parameter.default is parameter.empty:
                raise ModelLoadError(
                    f"cannot derive the config of {type(model).__name__}: it does not store {parameter.name!r}; "
                    "pass config= with its constructor arguments"
                )
            continue
        value = getattr(model, parameter.name)
        if value is None and parameter.default is None:
            continue
        kwargs[parameter.name] = _jsonable(value, what=f"{type(model).__name__}.{parameter.name}")
    return kwargs


def _check_rebuilds(model: nn.Module, architecture: str, kwargs: dict[str, Any]) -> None:
    try:
        with torch.device("meta"):
            rebuilt = build_model(architecture, kwargs)
    except (TypeError, ValueError, LookupError) as err:
        raise ModelLoadError(f"config {kwargs} does not build a {architecture}: {err}") from err
    have = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    want = {key: tuple(value.shape) for key, value in rebuilt.state_dict().items()}
    if have != want:
        differing = sorted(key for key in have.keys() | want.keys() if have.get(key) != want.get(key))
        raise ModelLoadError(
            f"config {kwargs} rebuilds a {architecture} whose weights differ from this model's "
            f"({listing(differing)}); pass config= with the arguments the model was built with"
        )


def _jsonable(value: Any, *, what: str) -> Any:
    """``value`` as plain JSON types (tuples become lists), or ``ModelLoadError`` if it has no JSON form."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, what=what) for item in value]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: _jsonable(item, what=what) for key, item in value.items()}
    raise ModelLoadError(
        f"{what} is a {type(value).__name__}, which config.json cannot hold; pass config= with JSON values"
    )
