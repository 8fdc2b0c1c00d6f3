"""Pretrained models by name: a small registry, loading from the Hugging Face Hub or disk, and saving.

The on-disk format is the one ``huggingface_hub.PyTorchModelHubMixin`` publishes (``config.json`` holding the
constructor kwargs, ``model.safetensors``), so the public CT-FM repos load as they are and a directory written by
``save_pretrained`` can be uploaded as a Hub repo. Weights are read with safetensors only: nothing that comes from
disk or the network is ever unpickled.

Environment: ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` are read on every call (huggingface_hub itself reads them once,
at import), so setting them later still takes effect. The cache is huggingface_hub's (``HF_HUB_CACHE``/``HF_HOME``)
unless ``cache_dir`` is given.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ctfm.atomic import write_atomically
from ctfm.errors import ModelLoadError
from ctfm.nn.encoder import ARCHITECTURES, build_model

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: Key in the safetensors metadata (or a hand-written ``config.json``) naming a class of
#: ``ctfm.nn.encoder.ARCHITECTURES``.
ARCHITECTURE_KEY = "architecture"

_CT_FM_CONFIG = {"blocks_down": [1, 2, 2, 4, 4], "in_channels": 1, "init_filters": 32, "spatial_dims": 3}
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_WEIGHT_SUFFIXES = (".safetensors", *_PICKLE_SUFFIXES)
_LISTED_KEYS = 10


@dataclass(frozen=True)
class ModelSpec:
    """A published model: the Hub repo holding its files and the network they fit.

    Published ``config.json`` files carry constructor kwargs but no class name, hence ``architecture``;
    ``default_config`` is used only when the repo has no ``config.json``.
    """

    name: str
    repo_id: str
    architecture: str
    default_config: Mapping[str, Any]
    description: str

    def __post_init__(self) -> None:  # a private, read-only copy: specs must not share or change configs
        object.__setattr__(self, "default_config", MappingProxyType(json.loads(json.dumps(dict(self.default_config)))))


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "ct-fm",
            "project-lighter/ct_fm_feature_extractor",
            "SegResEncoder",
            _CT_FM_CONFIG,
            "CT-FM encoder (SegResEncoder, 77.8M params): intra-sample SimCLR on 148k IDC CT scans; 512-d features",
        ),
        ModelSpec(
            "ct-fm-segresnet",
            "project-lighter/ct_fm_segresnet",
            "SegResNetDS",
            {**_CT_FM_CONFIG, "out_channels": 2, "dsdepth": 1},
            "SegResNetDS with the CT-FM encoder (encoder.*) and an untrained decoder, for fine-tuning",
        ),
        ModelSpec(
            "ct-fm-whole-body",
            "project-lighter/whole_body_segmentation",
            "SegResNetDS",
            {**_CT_FM_CONFIG, "out_channels": 118, "dsdepth": 4},
            "CT-FM SegResNetDS fine-tuned on TotalSegmentator v2: 117 structures + background",
        ),
    )
}


def list_models() -> list[str]:
    """Names ``load`` accepts besides paths and Hub repo ids."""
    return list(MODELS)


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
    ``HF_HUB_OFFLINE``. The architecture comes from the registry, else an ``"architecture"`` key in the config or the
    safetensors metadata ctfm writes, else
    the weights' key names (see ``infer_config``). Loading is strict: any key or shape mismatch raises
    ``ModelLoadError`` naming the keys. With an unreachable Hub and an empty cache it fails after one attempt (at
    most ``HF_HUB_ETAG_TIMEOUT``, 10 s, never huggingface_hub's retries) with a ``ModelLoadError`` saying how to
    provide the files.
    """
    source = str(name_or_path)
    spec = _find_spec(source)
    path = Path(source).expanduser()
    if spec is None and path.exists():
        weights, config = _local_files(path)
    elif spec is not None or (_REPO_ID.fullmatch(source) and path.suffix not in _WEIGHT_SUFFIXES):
        weights, config = _hub_files(
            spec, source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only
        )
    else:
        raise ModelLoadError(
            f"{source}: no such file or directory, not a model name ({', '.join(MODELS)}) and not a Hub repo id"
        )
    tensors, metadata = _read_weights(weights)
    architecture, kwargs = _resolve_architecture(spec, config, metadata, tensors, weights)
    return _instantiate(architecture, kwargs, tensors, str(weights)).to(device).eval()


def save_pretrained(model: nn.Module, directory: str | os.PathLike, *, config: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` (each atomically) so that ``load`` rebuilds it.

    ``config`` (constructor kwargs) is derived from the attributes the MONAI class stores when not given; either
    way it must rebuild a network with exactly the model's state-dict keys and shapes. ``config.json`` holds the
    constructor kwargs only, exactly like the published repos (so ``PyTorchModelHubMixin`` loaders read it too);
    the architecture name and the config also go into the safetensors metadata, so the weights file alone loads.
    """
    kwargs = dict(config) if config is not None else {}
    architecture = kwargs.pop(ARCHITECTURE_KEY, None) or _architecture_of(model)
    if config is None:
        kwargs = _derive_config(model, architecture)
    kwargs = _jsonable(kwargs, what=f"config of {type(model).__name__}")
    _check_rebuilds(model, architecture, kwargs)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in model.state_dict().items()}
    metadata = {"format": "pt", ARCHITECTURE_KEY: architecture, "config": json.dumps(kwargs, sort_keys=True)}
    write_atomically(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    document = json.dumps(kwargs, indent=2, sort_keys=True) + "\n"
    write_atomically(directory / CONFIG_NAME, lambda tmp: tmp.write_text(document))
    return directory


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, assign: bool = False
) -> nn.Module:
    """Copy ``state`` into ``model``; on any difference raise ``ModelLoadError`` naming the keys.

    A prefix shared by every key of ``state`` that ends where a model key begins (``network.``, ``model.``) is
    dropped first. Tensors are cast to the model's dtypes. ``assign=True`` (for a model built on the meta device)
    gives the model copies of the tensors instead of copying into its existing ones.
    """
    expected = model.state_dict()
    state = _strip_prefix(dict(state), expected.keys())
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = [
        f"{key} {tuple(state[key].shape)} (model {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            f"{label}: {_listing(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        ]
        raise ModelLoadError(f"{source}: weights do not match {type(model).__name__}; " + "; ".join(problems))
    # Adopted tensors are copied: safetensors maps the file, and a model must not change when the file does.
    model.load_state_dict({k: state[k].to(v.dtype, copy=assign) for k, v in expected.items()}, assign=assign)
    return model


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


# ---------------------------------------------------------------------------------------------------- loading


def _find_spec(source: str) -> ModelSpec | None:
    return MODELS.get(source) or next((spec for spec in MODELS.values() if spec.repo_id == source), None)


def _local_files(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """Weights file and optional config of a local directory or file; pickle formats are refused by name."""
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            pickled = sorted(p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
            found = f" (found {', '.join(pickled)}: pickle formats are not read)" if pickled else ""
            raise ModelLoadError(f"{path}: no {WEIGHTS_NAME}{found}; ctfm reads weights from safetensors only")
        config_path = path / CONFIG_NAME
        return weights, _read_config(config_path) if config_path.is_file() else None
    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"{path}: not a .safetensors file or model directory; ctfm reads weights from safetensors only "
            "(pickle files can run code): export a checkpoint with `ctfm export` or safetensors.torch.save_file"
        )
    return path, None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable config ({err})") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config must be a JSON object of constructor arguments")
    return config


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
    """Precedence: registry, then ``config.json``, then the file's metadata, then inference from the weights."""
    if config is None and "config" in metadata:
        try:
            config = dict(json.loads(metadata["config"]))
        except (TypeError, ValueError) as err:
            raise ModelLoadError(f"{origin}: unreadable config in the safetensors metadata ({err})") from err
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


def _strip_prefix(state: dict[str, torch.Tensor], expected: Collection[str]) -> dict[str, torch.Tensor]:
    if not state or not expected or state.keys() & expected:
        return state
    anchor = next(iter(expected))
    for key in state:
        if key.endswith("." + anchor):
            prefix = key[: -len(anchor)]
            if all(k.startswith(prefix) for k in state):
                return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _block_counts(shapes: Mapping[str, Sequence[int]], group: str) -> list[int]:
    pattern = re.compile(re.escape(group) + r"\.(\d+)\.blocks\.(\d+)\.")
    blocks: dict[int, set[int]] = {}
    for key in shapes:
        match = pattern.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    return [len(blocks.get(level, ())) for level in range(max(blocks, default=-1) + 1)]


def _listing(keys: Sequence[str]) -> str:
    more = f" ... and {len(keys) - _LISTED_KEYS} more" if len(keys) > _LISTED_KEYS else ""
    return ", ".join(keys[:_LISTED_KEYS]) + more


# ---------------------------------------------------------------------------------------------------- the Hub


def _hub_files(
    spec: ModelSpec | None,
    repo_id: str,
    *,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    local_files_only: bool | None,
) -> tuple[Path, dict[str, Any] | None]:
    """Weights and (when the repo has one) config of a Hub repo, from the cache or downloaded."""
    if spec is not None:
        repo_id = spec.repo_id
    offline = local_files_only if local_files_only is not None else _offline_from_env()
    fetch = _HubFetch(spec.name if spec else repo_id, repo_id, revision, cache_dir, offline)
    weights = fetch(WEIGHTS_NAME)
    config_path = fetch.optional(CONFIG_NAME)
    return weights, _read_config(config_path) if config_path is not None else None


def _offline_from_env() -> bool:
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"} or constants.HF_HUB_OFFLINE


class _AbsentFile(ModelLoadError):
    """The repo (or the cache, offline) has no such file: fatal for the weights, not for ``config.json``."""


@dataclass(frozen=True)
class _HubFetch:
    """One model's files from the Hub, with errors that say what is missing and how to provide it."""

    label: str
    repo_id: str
    revision: str | None
    cache_dir: str | os.PathLike | None
    offline: bool

    def __call__(self, filename: str) -> Path:
        from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

        endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/") or None
        arguments = {"revision": self.revision, "cache_dir": self.cache_dir, "endpoint": endpoint}
        if self.offline:
            try:
                return Path(hf_hub_download(self.repo_id, filename, local_files_only=True, **arguments))
            except LocalEntryNotFoundError as err:
                reason = "offline (HF_HUB_OFFLINE or local_files_only) and not in the cache"
                raise self._error(filename, reason, absent=True) from err
        try:
            if not isinstance(try_to_load_from_cache(self.repo_id, filename, self.cache_dir, self.revision), str):
                # Not cached: ask once, without retries. hf_hub_download would retry a refused connection with
                # back-off for half a minute before failing; with a cached copy it falls back to it at once.
                url = hf_hub_url(self.repo_id, filename, revision=self.revision, endpoint=endpoint)
                get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT, endpoint=endpoint)
            return Path(hf_hub_download(self.repo_id, filename, **arguments))
        except LocalEntryNotFoundError as err:  # the Hub stopped answering between the check and the download
            raise self._error(filename, _reason(err, endpoint or constants.ENDPOINT, self.revision)) from err
        except EntryNotFoundError as err:
            raise self._error(filename, f"the repo has no file {filename}", absent=True) from err
        except Exception as err:  # the network boundary: httpx/requests, HTTP and OS errors differ across versions
            raise self._error(filename, _reason(err, endpoint or constants.ENDPOINT, self.revision)) from err

    def optional(self, filename: str) -> Path | None:
        """The file, or None when the repo (or, offline, the cache) does not have it."""
        try:
            return self(filename)
        except _AbsentFile:
            return None

    def _error(self, filename: str, reason: str, *, absent: bool = False) -> ModelLoadError:
        from huggingface_hub import constants

        cache = Path(self.cache_dir) if self.cache_dir is not None else Path(constants.HF_HUB_CACHE)
        return (_AbsentFile if absent else ModelLoadError)(
            f"cannot load model {self.label!r} (Hugging Face repo {self.repo_id!r}, file {filename}): {reason}. "
            f"Cache searched: {cache}. To load it without the Hub: pass ctfm.load a local path (a directory with "
            f"{CONFIG_NAME} and {WEIGHTS_NAME}, or a .safetensors file); or fill a Hugging Face cache on a connected "
            f"machine (`hf download {self.repo_id}`), copy it here and point HF_HOME or cache_dir at it; or set "
            "HF_ENDPOINT to a reachable Hub mirror."
        )


def _reason(err: Exception, endpoint: str, revision: str | None) -> str:
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(err, RevisionNotFoundError):
        return f"{endpoint} has no revision {revision!r} of it"
    if isinstance(err, RepositoryNotFoundError):
        return f"{endpoint} has no such repo (or it is private or gated)"
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"download from {endpoint} failed ({type(err).__name__}{': ' + detail if detail else ''})"


# ---------------------------------------------------------------------------------------------------- saving


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
            f"({_listing(differing)}); pass config= with the arguments the model was built with"
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
