"""A Lightning callback that keeps a recipe's output to what a user can act on: warnings, errors, progress bars.

Lightning announces the accelerators, advertises packages and prints the model summary at INFO level; lighter logs
where it saved the config. The shared trainer piece lists this callback first, so it is built before the logger,
the checkpoint callbacks and the Trainer itself, whose announcements it silences. Warnings and errors still show.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytorch_lightning as pl

#: Messages nobody running a recipe can act on (Lightning's LeafSpec deprecation comes from torch's pytree).
FRAMEWORK_NOISE = (r".*LeafSpec.* is deprecated",)
_LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning")


class QuietLightning(pl.Callback):
    """Raise Lightning's loggers to WARNING while a run lasts (``verbose: true`` keeps everything)."""

    def __init__(self, verbose: bool = False) -> None:
        self.levels: dict[str, int] = {}
        if verbose:
            return
        for name in _LOGGERS:
            self.levels[name] = logging.getLogger(name).level
            logging.getLogger(name).setLevel(logging.WARNING)
        for pattern in FRAMEWORK_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            from loguru import logger

            logger.disable("lighter")  # its only message in a run is "Saved config to ..."
        except ImportError:  # lighter installs loguru; without it there is nothing to quiet
            pass

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Give the loggers their levels back, for whatever runs next in this process."""
        for name, level in self.levels.items():
            logging.getLogger(name).setLevel(level)
        if self.levels:
            from loguru import logger

            logger.enable("lighter")

    def state_dict(self) -> dict[str, Any]:
        return {}
