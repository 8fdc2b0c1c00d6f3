"""The model hub: registry exactness, save/load round trips, strict loading, and the Hub download path.

Downloads are tested against a Hub-like HTTP server on 127.0.0.1 (a thread in this process) serving
``/{repo_id}/resolve/{revision}/{file}`` with the headers huggingface_hub checks (``X-Repo-Commit``, ``ETag``,
``Content-Length``, ``X-Error-Code``). ``HF_ENDPOINT`` is pointed at it with ``monkeypatch.setenv``: ``ctfm.hub``
reads it on every call, so huggingface_hub's import-time ``constants.ENDPOINT`` need not be patched.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ctfm.errors import ModelLoadError
from ctfm.hub import (
    ARCHITECTURES,
    MODELS,
    ModelSpec,
    build_model,
    infer_config,
    list_models,
    load,
    save_pretrained,
    saving,
)
from ctfm.nn.encoder import ct_fm_encoder, ct_fm_segresnet

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TINY = {"blocks_down": [1, 2, 2, 4, 4], "in_channels": 1, "init_filters": 4, "spatial_dims": 3}
CT_FM_KEY = re.compile(
    r"conv_init\.weight"
    r"|layers\.[0-4]\.blocks\.[0-3]\.(norm1|norm2)\.(weight|bias|running_mean|running_var|num_batches_tracked)"
    r"|layers\.[0-4]\.blocks\.[0-3]\.(conv1|conv2)\.weight"
    r"|layers\.[0-3]\.downsample\.weight"
)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _assert_same_weights(model: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


def _randomised(model: nn.Module) -> nn.Module:
    """Distinct values in every tensor (BatchNorm statistics too), so a wrong copy cannot pass unnoticed."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
    return model


def _meta_shapes(architecture: str, config: dict) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_model(architecture, config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


# ----------------------------------------------------------------------------------------- a Hub-like server


class _HubHandler(BaseHTTPRequestHandler):
    server: _HubServer

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _answer(self, *, with_body: bool) -> None:
        self.server.requests.append((self.command, self.path))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", urlsplit(self.path).path)
        files = self.server.repos.get(match[1]) if match else None
        if match is None or files is None:
            return self._not_found("RepoNotFound")
        if match[2] not in ("main", COMMIT):
            return self._not_found("RevisionNotFound")
        if match[3] not in files:
            return self._not_found("EntryNotFound")
        data = files[match[3]]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if with_body:
            self.wfile.write(data)

    def _not_found(self, code: str) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


class _HubServer(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _HubHandler)
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str]] = []
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"

    def host(self, repo_id: str, directory: Path) -> None:
        self.repos[repo_id] = {path.name: path.read_bytes() for path in directory.iterdir()}


@pytest.fixture
def hub_server() -> Iterator[_HubServer]:
    server = _HubServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def closed_endpoint() -> str:
    """An address on 127.0.0.1 where nothing listens: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def tiny_spec(monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    spec = ModelSpec("tiny", "ctfm-test/tiny-encoder", "SegResEncoder", TINY, "a 4-filter CT-FM encoder for tests")
    monkeypatch.setitem(MODELS, spec.name, spec)
    return spec


@pytest.fixture
def published_tiny(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A repo laid out like the published ones: config.json with constructor kwargs only, model.safetensors."""
    model = _randomised(ct_fm_encoder(init_filters=4))
    directory = tmp_path / "published"
    directory.mkdir()
    save_file(_state(model), str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(TINY, indent=2, sort_keys=True))
    return directory, _state(model)


# ----------------------------------------------------------------------------------------- registry


def test_registry_names_the_published_models():
    assert list_models() == ["ct-fm", "ct-fm-segresnet", "ct-fm-whole-body", "fmcib"]
    assert {name: spec.repo_id for name, spec in MODELS.items()} == {
        "ct-fm": "project-lighter/ct_fm_feature_extractor",
        "ct-fm-segresnet": "project-lighter/ct_fm_segresnet",
        "ct-fm-whole-body": "project-lighter/whole_body_segmentation",
        "fmcib": "surajpaib/FMCIB",
    }
    assert all(spec.architecture in ARCHITECTURES and spec.description for spec in MODELS.values())
    with pytest.raises(TypeError):
        MODELS["ct-fm"].default_config["init_filters"] = 8  # type: ignore[index]


def test_ct_fm_entry_builds_the_published_encoder_exactly():
    spec = MODELS["ct-fm"]
    assert dict(spec.default_config) == {
        "blocks_down": [1, 2, 2, 4, 4],
        "in_channels": 1,
        "init_filters": 32,
        "spatial_dims": 3,
    }
    with torch.device("meta"):
        model = build_model(spec.architecture, dict(spec.default_config))
    keys = list(model.state_dict())
    assert sum(parameter.numel() for parameter in model.parameters()) == 77_760_992
    assert len(keys) == 161
    assert [key for key in keys if not CT_FM_KEY.fullmatch(key)] == []
    assert tuple(model.state_dict()["conv_init.weight"].shape) == (32, 1, 3, 3, 3)
    assert tuple(model.state_dict()["layers.4.blocks.3.conv2.weight"].shape) == (512, 512, 3, 3, 3)


@pytest.mark.parametrize("name, out_channels, heads", [("ct-fm-segresnet", 2, 1), ("ct-fm-whole-body", 118, 4)])
def test_segresnet_entries_hold_the_ct_fm_encoder(name: str, out_channels: int, heads: int):
    spec = MODELS[name]
    shapes = _meta_shapes(spec.architecture, dict(spec.default_config))
    encoder = {key.removeprefix("encoder."): shape for key, shape in shapes.items() if key.startswith("encoder.")}
    assert encoder == _meta_shapes("SegResEncoder", dict(MODELS["ct-fm"].default_config))
    head_shapes = [shape for key, shape in shapes.items() if key.endswith("head.weight")]
    assert len(head_shapes) == heads
    assert all(shape[0] == out_channels for shape in head_shapes)
    assert infer_config(shapes) == (
        "SegResNetDS",
        {**dict(spec.default_config), "blocks_up": [1, 1, 1, 1]},
    )


# ----------------------------------------------------------------------------------------- save / load


def test_save_and_load_round_trip_an_encoder_exactly(tmp_path: Path):
    model = _randomised(ct_fm_encoder(init_filters=4)).eval()
    directory = save_pretrained(model, tmp_path / "encoder")

    config = json.loads((directory / "config.json").read_text())
    assert "architecture" not in config, "config.json must stay in the published format: constructor kwargs only"
    assert {key: config[key] for key in TINY} == TINY
    assert safe_open(str(directory / "model.safetensors"), "pt").metadata()["architecture"] == "SegResEncoder"
    assert sorted(path.name for path in directory.iterdir()) == ["config.json", "model.safetensors"]
    assert (directory / "model.safetensors").stat().st_mode == (directory / "config.json").stat().st_mode

    loaded = load(directory)
    assert isinstance(loaded, type(model)) and not loaded.training
    _assert_same_weights(loaded, _state(model))
    x = torch.rand(1, 1, 16, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x)[-1], model(x)[-1])


def test_save_and_load_round_trip_a_segresnet(tmp_path: Path):
    model = _randomised(ct_fm_segresnet(init_filters=4, out_channels=3, dsdepth=2))
    loaded = load(save_pretrained(model, tmp_path / "segresnet"))
    assert (loaded.out_channels, loaded.dsdepth, loaded.init_filters) == (3, 2, 4)
    _assert_same_weights(loaded, _state(model))


def test_a_single_safetensors_file_loads_from_its_metadata(tmp_path: Path):
    model = _randomised(ct_fm_segresnet(init_filters=4, out_channels=3, dsdepth=2))
    directory = save_pretrained(model, tmp_path / "saved")
    alone = tmp_path / "elsewhere" / "weights.safetensors"
    alone.parent.mkdir()
    shutil.copy(directory / "model.safetensors", alone)
    _assert_same_weights(load(alone), _state(model))


def test_a_bare_prefixed_safetensors_file_is_read_by_inference(tmp_path: Path):
    model = _randomised(ct_fm_segresnet(init_filters=4, blocks_down=(1, 2, 3), out_channels=5, dsdepth=2))
    path = tmp_path / "lightning_export.safetensors"
    save_file({f"network.{key}": value for key, value in _state(model).items()}, str(path))

    loaded = load(path)
    assert isinstance(loaded, type(model))
    assert (loaded.blocks_down, loaded.out_channels, loaded.dsdepth) == ((1, 2, 3), 5, 2)
    _assert_same_weights(loaded, _state(model))


def test_a_published_style_directory_without_architecture_loads(published_tiny):
    directory, expected = published_tiny
    loaded = load(directory)
    assert type(loaded).__name__ == "SegResEncoder"
    _assert_same_weights(loaded, expected)


def test_loaded_weights_do_not_depend_on_the_file(tmp_path: Path):
    model = _randomised(ct_fm_encoder(init_filters=4))
    directory = save_pretrained(model, tmp_path / "model")
    loaded = load(directory)
    weights = directory / "model.safetensors"
    with weights.open("r+b") as handle:  # overwrite the tensor data in place, as a careless copy would
        handle.seek(weights.stat().st_size // 2)
        handle.write(b"\xff" * 4096)
    _assert_same_weights(loaded, _state(model))


def test_strict_load_names_every_mismatched_key(tmp_path: Path):
    directory = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "model")
    state = load_file(str(directory / "model.safetensors"))
    del state["conv_init.weight"]
    state["projection.weight"] = torch.zeros(2, 2)
    state["layers.0.blocks.0.conv1.weight"] = torch.zeros(4, 4, 1, 1, 1)
    save_file(state, str(directory / "model.safetensors"))

    with pytest.raises(ModelLoadError) as raised:
        load(directory)
    message = str(raised.value)
    assert str(directory / "model.safetensors") in message
    assert "missing: conv_init.weight" in message
    assert "unexpected: projection.weight" in message
    assert "layers.0.blocks.0.conv1.weight (4, 4, 1, 1, 1) (model (4, 4, 3, 3, 3))" in message


def test_weights_are_read_with_safetensors_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    model = ct_fm_encoder(init_filters=4)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"pickled: no model\.safetensors \(found pytorch_model\.bin"):
        load(pickled)
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load(pickled / "pytorch_model.bin")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", refuse)
    _assert_same_weights(load(save_pretrained(model, tmp_path / "safe")), _state(model))


def test_unreadable_files_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ModelLoadError, match=r"corrupt\.safetensors: not a readable safetensors file"):
        load(corrupt)
    directory = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "model")
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: unreadable config"):
        load(directory)
    with pytest.raises(ModelLoadError, match="not a model name"):
        load("no-such-model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="weights/missing.safetensors: no such file"):
        load("weights/missing.safetensors")


def test_save_needs_config_when_the_model_does_not_store_it(tmp_path: Path):
    model = _randomised(build_model("SegResNetDS", {**TINY, "upsample_mode": "nontrainable"}))
    with pytest.raises(ModelLoadError, match="pass config="):
        save_pretrained(model, tmp_path / "derived")
    assert not (tmp_path / "derived").exists()

    directory = save_pretrained(model, tmp_path / "explicit", config={**TINY, "upsample_mode": "nontrainable"})
    _assert_same_weights(load(directory), _state(model))
    with pytest.raises(ModelLoadError, match="cannot save a Linear"):
        save_pretrained(nn.Linear(2, 2), tmp_path / "linear")


def test_an_interrupted_save_leaves_no_weights_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def crash(tensors: dict, filename: str, metadata: dict) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(saving, "save_file", crash)
    directory = tmp_path / "model"
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(ct_fm_encoder(init_filters=4), directory)
    assert list(directory.iterdir()) == []


class _Scaled(nn.Module):
    """A network with a buffer outside its state dict, which the meta-device build cannot fill."""

    def __init__(self, features: int = 3):
        super().__init__()
        self.features = features
        self.linear = nn.Linear(features, features)
        self.register_buffer("scale", torch.full((features,), 2.0), persistent=False)


def test_buffers_outside_the_state_dict_are_built_for_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(ARCHITECTURES, "_Scaled", _Scaled)
    model = _Scaled(features=5)
    directory = save_pretrained(model, tmp_path / "scaled")
    assert json.loads((directory / "config.json").read_text()) == {"features": 5}
    loaded = load(directory)
    assert torch.equal(loaded.scale, torch.full((5,), 2.0))
    _assert_same_weights(loaded, _state(model))


# ----------------------------------------------------------------------------------------- the Hub


def test_download_from_a_hub_endpoint_then_load_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_server: _HubServer, tiny_spec, published_tiny, closed_endpoint
):
    directory, expected = published_tiny
    hub_server.host(tiny_spec.repo_id, directory)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    cache = tmp_path / "cache"

    _assert_same_weights(load("tiny", cache_dir=cache), expected)
    assert ("GET", f"/{tiny_spec.repo_id}/resolve/main/model.safetensors") in hub_server.requests
    snapshot = cache / "models--ctfm-test--tiny-encoder" / "snapshots" / COMMIT
    assert sorted(path.name for path in snapshot.iterdir()) == ["config.json", "model.safetensors"]
    assert (cache / "models--ctfm-test--tiny-encoder" / "refs" / "main").read_text() == COMMIT

    hub_server.requests.clear()
    _assert_same_weights(load("tiny", cache_dir=cache, local_files_only=True), expected)
    assert hub_server.requests == []
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)  # the Hub is gone: fall back to the cache, no retries
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    _assert_same_weights(load("tiny", cache_dir=cache), expected)
    assert sleeps == []


def test_download_by_revision_and_by_repo_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_server: _HubServer, tiny_spec, published_tiny
):
    directory, expected = published_tiny
    hub_server.host(tiny_spec.repo_id, directory)
    model = _randomised(ct_fm_segresnet(init_filters=4, out_channels=3))
    hub_server.host("someone/segresnet", save_pretrained(model, tmp_path / "pushed"))
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)

    _assert_same_weights(load("tiny", revision=COMMIT, cache_dir=tmp_path / "a"), expected)
    assert ("GET", f"/{tiny_spec.repo_id}/resolve/{COMMIT}/model.safetensors") in hub_server.requests
    with pytest.raises(ModelLoadError, match="has no revision 'v9'"):
        load("tiny", revision="v9", cache_dir=tmp_path / "b")
    _assert_same_weights(load("someone/segresnet", cache_dir=tmp_path / "c"), _state(model))
    with pytest.raises(ModelLoadError, match="'someone/missing'.*has no such repo"):
        load("someone/missing", cache_dir=tmp_path / "d")


def test_a_repo_without_config_uses_the_registry_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_server: _HubServer, tiny_spec, published_tiny
):
    directory, expected = published_tiny
    (directory / "config.json").unlink()
    hub_server.host(tiny_spec.repo_id, directory)
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    _assert_same_weights(load("tiny", cache_dir=tmp_path / "cache"), expected)
    assert ("HEAD", f"/{tiny_spec.repo_id}/resolve/main/config.json") in hub_server.requests


def test_a_prefilled_cache_loads_without_any_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, published_tiny, closed_endpoint
):
    """``ct-fm`` resolves to huggingface_hub's cache layout of its repo (a tiny stand-in for the weights here)."""
    directory, expected = published_tiny
    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--project-lighter--ct_fm_feature_extractor"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for name in ("config.json", "model.safetensors"):
        blob = repo / "blobs" / hashlib.sha256((directory / name).read_bytes()).hexdigest()
        shutil.copy(directory / name, blob)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)

    _assert_same_weights(load("ct-fm", cache_dir=cache, local_files_only=True), expected)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_same_weights(load("ct-fm", cache_dir=cache), expected)
    _assert_same_weights(load("project-lighter/ct_fm_feature_extractor", cache_dir=cache), expected)


def test_unreachable_hub_and_empty_cache_fail_at_once_with_instructions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_endpoint: str
):
    monkeypatch.setenv("HF_ENDPOINT", closed_endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sleeps: list[float] = []  # huggingface_hub's retry back-off sleeps; failing at once means never sleeping
    monkeypatch.setattr(time, "sleep", sleeps.append)
    cache = tmp_path / "cache"
    with pytest.raises(ModelLoadError) as raised:
        load("ct-fm", cache_dir=cache)
    assert sleeps == []
    message = str(raised.value)
    for expected in ("'ct-fm'", "project-lighter/ct_fm_feature_extractor", closed_endpoint, "local path", "HF_HOME"):
        assert expected in message
    assert "HF_ENDPOINT" in message and "cache_dir" in message
    assert not list(cache.rglob("*.safetensors"))

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"'ct-fm-whole-body'.*whole_body_segmentation.*offline"):
        load("ct-fm-whole-body", cache_dir=cache)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelLoadError, match="not in the cache"):
        load("ct-fm", cache_dir=cache, local_files_only=True)


def _poisoned_encoder() -> nn.Module:
    encoder = ct_fm_encoder(init_filters=4)
    with torch.no_grad():
        encoder.conv_init.weight[0].fill_(float("nan"))
        encoder.layers[1].downsample.weight.fill_(float("inf"))
    return encoder


def test_save_pretrained_refuses_non_finite_weights_naming_them(tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"2 of \d+ tensors hold NaN or inf values \(conv_init.weight, layers.1"):
        save_pretrained(_poisoned_encoder(), tmp_path / "model")
    assert not (tmp_path / "model" / "model.safetensors").exists()


def test_load_refuses_non_finite_weights_naming_them(tmp_path: Path):
    from safetensors.torch import save_file

    path = tmp_path / "diverged.safetensors"
    save_file({k: v.contiguous() for k, v in _poisoned_encoder().state_dict().items()}, str(path))
    with pytest.raises(ModelLoadError, match=rf"{re.escape(str(path))}: 2 of \d+ tensors hold NaN or inf.*conv_init"):
        load(path)


# ----------------------------------------------------------------------------------------- input specs


def test_a_model_loaded_by_name_knows_its_input_spec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub_server: _HubServer, tiny_spec, published_tiny
):
    from ctfm.hub.registry import spec_of

    hub_server.host(tiny_spec.repo_id, published_tiny[0])
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    model = load("tiny", cache_dir=tmp_path / "cache")
    assert spec_of(model) is tiny_spec
    assert spec_of(load(published_tiny[0])) is None  # a folder without a spec: callers fall back to CT-FM's


def test_a_saved_spec_round_trips_and_drives_embedding(tmp_path: Path, sample_nifti):
    import ctfm
    from ctfm.hub.registry import attach_spec, spec_of
    from ctfm.transforms.lesion_crop import LesionCrop
    from ctfm.transforms.preprocess import CTPreprocessing

    spec = ModelSpec(
        "mine", "", "SegResEncoder", {}, "", CTPreprocessing(spacing=(4.0, 2.0, 2.0), body_threshold_hu=-300.0),
        embedding_dim=64, patch_size=(8, 32, 32),
        lesion_crop=LesionCrop("LPS", (2.0, 2.0, 2.0), (8, 32, 32), (-1000.0, 1000.0), clip=False),
    )  # fmt: skip
    folder = save_pretrained(attach_spec(ct_fm_encoder(init_filters=4), spec), tmp_path / "mine")
    assert json.loads((folder / "config.json").read_text())["ctfm"]["patch_size"] == [8, 32, 32]
    loaded = spec_of(load(folder))
    assert loaded is not None and loaded.input_spec() == spec.input_spec()
    model = load(folder)
    patches = ctfm.embed(model, sample_nifti, reduce=None)
    assert patches.patch_size == (8, 32, 32)
    explicit = ctfm.embed(model, sample_nifti, reduce=None, patch_size=(8, 32, 32), preprocess=spec.preprocessing)
    canonical = ctfm.embed(model, sample_nifti, reduce=None, patch_size=(8, 32, 32), preprocess=CTPreprocessing())
    assert torch.equal(patches.embeddings, explicit.embeddings)
    assert patches.embeddings.shape != canonical.embeddings.shape  # 4 x 2 x 2 mm, not 3 x 1 x 1 mm, tiles


def test_a_spec_saved_before_lesion_crops_and_weight_formats_still_loads(tmp_path: Path):
    from ctfm.hub.registry import MODELS, attach_spec, spec_of
    from ctfm.transforms.lesion_crop import CT_FM_CROP

    folder = save_pretrained(attach_spec(ct_fm_encoder(init_filters=4), MODELS["ct-fm"]), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["ctfm"]["weight_format"] == "safetensors" and config["ctfm"]["lesion_crop"]["orientation"] == "SPL"
    for key in ("lesion_crop", "weight_format"):
        del config["ctfm"][key]
    (folder / "config.json").write_text(json.dumps(config))
    loaded = spec_of(load(folder))
    assert loaded is not None and loaded.lesion_crop == CT_FM_CROP and loaded.weight_format == "safetensors"


def test_the_loader_dispatches_on_the_specs_weight_format():
    """Every stored format but safetensors has a loader; FMCIB's entry names its own, not its architecture."""
    from ctfm.hub.loading import FORMAT_LOADERS, LOCAL_SUFFIXES
    from ctfm.hub.registry import MODELS, SAFETENSORS, WEIGHT_FORMATS

    assert set(FORMAT_LOADERS) == set(WEIGHT_FORMATS) - {SAFETENSORS}
    assert MODELS["fmcib"].weight_format == "fmcib-torch" and MODELS["ct-fm"].weight_format == SAFETENSORS
    assert all(name in MODELS for name in LOCAL_SUFFIXES.values())
    with pytest.raises(ValueError, match="weight_format must be one of"):
        ModelSpec("x", "", "SegResEncoder", {}, "", weight_format="pickle")


def test_the_hub_modules_import_without_a_circle():
    """ctfm.hub.fmcib and ctfm.hub.loading share ctfm.hub.weights instead of importing each other."""
    import ast
    import graphlib

    import ctfm.hub

    folder = Path(ctfm.hub.__file__).parent
    graph = {}
    for path in folder.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ctfm.hub."):
                found.add(node.module)
        graph[f"ctfm.hub.{path.stem}"] = found
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the circle


def test_a_damaged_spec_is_named_by_key(tmp_path: Path):
    folder = save_pretrained(ct_fm_encoder(init_filters=4), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["ctfm"] = {"patch_size": "big"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"model.safetensors: ctfm::patch_size must be a list of 3 numbers"):
        load(folder)
