"""The Hub format's file names and config: what ``load`` reads and ``save_pretrained`` writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ctfm.errors import ModelLoadError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: The output channels' names of a segmentation model, beside its weights (background first).
CLASSES_FILE = "classes.json"
#: Key in the safetensors metadata (or a hand-written ``config.json``) naming a class of
#: :data:`ctfm.hub.registry.ARCHITECTURES`.
ARCHITECTURE_KEY = "architecture"


def read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{path}: unreadable config ({err})") from err
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: config must be a JSON object of constructor arguments")
    return config
