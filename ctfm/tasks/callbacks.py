"""Lightning callbacks every ctfm recipe adds to its trainer.

:class:`InterruptedCheckpoint` makes a run stopped by Ctrl-C or by a scheduler's SIGTERM resumable from where it
stopped, not from the last epoch checkpoint, which may be hours old. :class:`FreshCheckpointFolder` stops a new run
from mixing its checkpoints into an earlier run's folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from ctfm.outputs import OutputExistsError

#: File name of the checkpoint an interrupted fit writes beside its other checkpoints.
INTERRUPTED_NAME = "interrupted.ckpt"


class InterruptedCheckpoint(pl.Callback):
    """On Ctrl-C (KeyboardInterrupt) or SIGTERM during ``fit``, write ``<dirpath>/interrupted.ckpt`` and say how to
    resume from it.

    ``dirpath`` defaults to the first ``ModelCheckpoint``'s folder, else ``<default_root_dir>/checkpoints``. The file
    is written under a temporary name and renamed, so a second, harder kill never leaves a truncated checkpoint under
    the real name; an older ``interrupted.ckpt`` is replaced, and the message says so. A run stopped before its first
    optimizer step writes nothing (there is nothing to resume).

    Args:
        dirpath: where ``interrupted.ckpt`` goes; None: the checkpoints folder, as above.
    """

    def __init__(self, dirpath: str | Path | None = None):
        self.dirpath = None if dirpath is None else Path(dirpath)

    def checkpoint_path(self, trainer: pl.Trainer) -> Path:
        if self.dirpath is not None:
            return self.dirpath / INTERRUPTED_NAME
        model_checkpoint = trainer.checkpoint_callback
        folder = getattr(model_checkpoint, "dirpath", None)
        return Path(folder or Path(trainer.default_root_dir) / "checkpoints") / INTERRUPTED_NAME

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or trainer.state.fn != TrainerFn.FITTING:
            return
        cause = "SIGTERM" if isinstance(exception, SIGTERMException) else "Ctrl-C"
        if trainer.global_step == 0:
            _say(trainer, f"{cause}: stopped before the first training step; no checkpoint to resume from")
            return
        path = self.checkpoint_path(trainer)
        partial = path.with_name(f".{path.name}.partial")
        replaced = path.exists()
        try:
            trainer.save_checkpoint(partial)  # every rank calls it (a collective under DDP); rank 0 writes
            if trainer.is_global_zero:
                os.replace(partial, path)
        except Exception as err:  # noqa: BLE001 - the interruption is what the user must see; this is a footnote
            rank_zero_warn(f"{cause}: could not write {path}: {err}")
            return
        _say(
            trainer,
            f"{cause} at step {trainer.global_step} (epoch {trainer.current_epoch}): saved {path}"
            f"{' (replacing an older one)' if replaced else ''}. Resume with the same recipe and overrides: "
            f"lighter fit ... --ckpt_path {path}",
        )


class FreshCheckpointFolder(pl.Callback):
    """Refuse to start a new ``fit`` whose checkpoint folders already hold an earlier run's checkpoints.

    Lightning would not overwrite them: it writes ``last-v1.ckpt`` and ``epoch0000-v1.ckpt`` beside them, so
    ``last.ckpt``, the file users export and resume from, silently stays the earlier run's. A run resumed with
    ``--ckpt_path`` continues in its folder by design and passes.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:  # resuming: set before on_fit_start for the single-device and DDP strategies
            return
        for callback in trainer.checkpoint_callbacks:
            dirpath = getattr(callback, "dirpath", None)
            if dirpath is None:
                continue
            folder = Path(dirpath)
            earlier = sorted(folder.glob("*.ckpt"))
            if earlier:
                last = folder / "last.ckpt"
                resume = last if last.exists() else max(earlier, key=lambda path: path.stat().st_mtime)
                raise OutputExistsError(
                    f"{folder}: holds checkpoints of an earlier run ({', '.join(path.name for path in earlier[:3])}"
                    f"{', ...' if len(earlier) > 3 else ''}); resume it with --ckpt_path {resume}"
                    ", or start this run in another vars::output_dir"
                )


def _say(trainer: pl.Trainer, message: str) -> None:
    """One line on stderr from rank 0, whatever the logging level (the run is ending; this must be seen)."""
    if trainer.is_global_zero:
        print(message, file=sys.stderr, flush=True)
