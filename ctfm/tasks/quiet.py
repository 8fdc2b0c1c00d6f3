"""A Lightning callback that keeps a recipe's output to what a user can act on: warnings, errors, progress bars and
ctfm's own summaries (scans used and skipped, weights loaded).

Lightning announces the accelerators, advertises packages and prints summaries at INFO level; lighter logs where it
saved the config. The shared trainer piece lists this callback first, so it is built before the logger, the
checkpoint callbacks and the Trainer itself, whose announcements it filters out.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

#: Messages nobody running a recipe can act on (Lightning's LeafSpec deprecation comes from torch's pytree). A
#: non-empty checkpoint folder is only ever a resumed run's own: ``FreshCheckpointFolder`` stops any other run first.
FRAMEWORK_NOISE = (r".*LeafSpec.* is deprecated", r"Checkpoint directory .* exists and is not empty")
_PREFIXES = ("pytorch_lightning", "lightning_fabric", "lightning")
#: ctfm reports through Lightning's rank_zero_info, whose records carry the ctfm caller's file.
_CTFM = str(Path(__file__).resolve().parents[1])


class _WarningsAndCtfm(logging.Filter):
    """Let through warnings and errors, and the INFO lines ctfm itself logs through Lightning's helpers."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(_CTFM)


class QuietLightning(pl.Callback):
    """Filter Lightning's INFO lines while a run lasts (``verbose: true`` keeps everything).

    Args:
        verbose: keep every line (the filter is off).
    """

    def __init__(self, verbose: bool = False) -> None:
        self.filter = _WarningsAndCtfm()
        self.loggers: list[logging.Logger] = []
        if verbose:
            return
        names = [name for name in logging.Logger.manager.loggerDict if name.startswith(_PREFIXES)]
        for name in sorted({*names, *_PREFIXES}):
            logger = logging.getLogger(name)
            logger.addFilter(self.filter)
            self.loggers.append(logger)
        for pattern in FRAMEWORK_NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            from loguru import logger as loguru_logger

            loguru_logger.disable("lighter")  # its only message in a run is "Saved config to ..."
        except ImportError:  # lighter installs loguru; without it there is nothing to quiet
            pass

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Take the filters off again, for whatever runs next in this process."""
        for logger in self.loggers:
            logger.removeFilter(self.filter)
        if self.loggers:
            from loguru import logger as loguru_logger

            loguru_logger.enable("lighter")
        self.loggers = []

    def state_dict(self) -> dict[str, Any]:
        return {}
