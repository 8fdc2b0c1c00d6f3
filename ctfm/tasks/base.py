"""What every ctfm training task shares on top of lighter's ``LighterModule``.

- A step whose loss is NaN or inf is skipped (no backward, no optimizer step) and counted; ``nonfinite_patience``
  such steps in a row stop the run with an error naming the step and the scans of the batch. Under DDP the ranks
  agree before skipping, so they never disagree on whether to step. The buffers (BatchNorm's running statistics)
  are put back as they were before the skipped step: its forward pass has already folded the batch's NaN into
  them, which would poison every later step and refuse the next checkpoint.
- A validation, test or predict batch is None when every item of it failed to load (the data modules drop such
  items, :mod:`ctfm.data.base`): the step is skipped, in every task.
- A checkpoint is never written with non-finite weights: saving one stops the run and names the tensors.
- Logged values carry the batch size explicitly, so Lightning never guesses it from a batch of paths.
- Under CPU autocast (``precision=bf16-mixed`` on a CPU) the training step runs in float32: oneDNN's bfloat16
  Conv3d weight gradient reads uninitialised memory whenever a feature map is 2 voxels deep (the stride-16 encoder
  makes one from 16-, 24- and 32-slice patches), so gradients, and one optimizer step later most weights, became
  garbage or NaN, depending on what the freed memory held (hence runs that differed with the DataLoader workers).
  Autocast on GPUs is left on.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from lighter import LighterModule
from pytorch_lightning.utilities import rank_zero_warn

from ctfm.errors import CTFMError
from ctfm.hub.loading import listing, nonfinite_tensors

#: Default number of consecutive non-finite losses that ends a run.
NONFINITE_PATIENCE = 5
_NAMED_SCANS = 4


class NonFiniteTrainingError(CTFMError, FloatingPointError):
    """Training diverged: losses or weights became NaN or inf."""


class CTFMModule(LighterModule):
    """A ``LighterModule`` that refuses to train on, or save, non-finite numbers.

    Subclasses call :meth:`finite_or_skip` on the loss in ``training_step`` and :meth:`batch_size_of` is used
    for logging; everything else is lighter's.

    Args:
        args: passed to ``LighterModule`` (network, criterion, optimizer, scheduler, metrics).
        nonfinite_patience: non-finite losses in a row that stop the run (each one skips its step).
        kwargs: passed to ``LighterModule``.
    """

    def __init__(self, *args: Any, nonfinite_patience: int = NONFINITE_PATIENCE, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if nonfinite_patience < 1:
            raise ValueError(f"nonfinite_patience must be at least 1, got {nonfinite_patience}")
        self.nonfinite_patience = nonfinite_patience
        self.skipped_steps = 0
        self._nonfinite_in_a_row = 0
        self._batch_size = 1
        self._buffers_before_step: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        for name in ("validation_step", "test_step", "predict_step"):
            if callable(vars(cls).get(name)):  # not a step switched off with None
                setattr(cls, name, _skip_empty_batch(vars(cls)[name]))

    def batch_size_of(self, batch: Any) -> int:
        """Items in ``batch``: the length of its first tensor (or list) value."""
        values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else [batch]
        for value in values:
            if isinstance(value, torch.Tensor) and value.ndim > 0:
                return int(value.shape[0])
            if isinstance(value, (list, tuple)):
                return len(value)
        return 1

    def finite_or_skip(self, loss: torch.Tensor, batch: Any) -> torch.Tensor | None:
        """``loss``, or None (Lightning then skips the step) when it is NaN or inf on any rank.

        Raises :class:`NonFiniteTrainingError` after ``nonfinite_patience`` such steps in a row.
        """
        finite = torch.isfinite(loss.detach()).all().to(torch.float32)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if bool(finite):
            self._nonfinite_in_a_row = 0
            return loss
        self.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        self._restore_buffers()
        scans = _describe(batch)
        if self._nonfinite_in_a_row >= self.nonfinite_patience:
            raise NonFiniteTrainingError(
                f"the loss was NaN or inf for {self._nonfinite_in_a_row} steps in a row, the last at step "
                f"{self.global_step} (scans: {scans}); stopping before the weights are spoiled. Lower the learning "
                "rate, try precision 32-true, or check these scans"
            )
        self.print(f"warning: non-finite loss at step {self.global_step} (scans: {scans}); step skipped")
        return None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Remember every buffer (running statistics, step counters) so a skipped step can restore them."""
        self._buffers_before_step = [(buffer, buffer.detach().clone()) for buffer in self.buffers()]

    def _restore_buffers(self) -> None:
        """Put the buffers back as :meth:`on_train_batch_start` found them."""
        with torch.no_grad():
            for buffer, before in self._buffers_before_step:
                buffer.copy_(before)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        self._batch_size = self.batch_size_of(batch)
        with self.training_precision():
            loss = self.compute_loss(batch)
        return self.finite_or_skip(loss, batch)

    def training_precision(self) -> contextlib.AbstractContextManager:
        """Autocast switched off for a training step on the CPU (see the module docstring); else a no-op.

        Tasks that write their own ``training_step`` run its forward and loss inside this.
        """
        if self.device.type != "cpu" or not _cpu_autocast_enabled():
            return contextlib.nullcontext()
        rank_zero_warn(
            "bf16 mixed precision on a CPU: training steps run in float32 instead, because oneDNN's bfloat16 Conv3d "
            "weight gradient is corrupt for 2-voxel-deep feature maps; set precision=32-true to silence this"
        )
        return torch.autocast("cpu", enabled=False)

    def compute_loss(self, batch: Any) -> torch.Tensor:
        """The training loss of ``batch``; tasks that only need a loss implement this instead of training_step."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_loss() or training_step()")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if outputs is not None:  # a skipped step has nothing to log
            super().on_train_batch_end(outputs, batch, batch_idx)

    def _on_batch_end(self, outputs: Any, batch_idx: int) -> None:
        if outputs is not None:  # a skipped batch (every item failed to load) has nothing to log
            super()._on_batch_end(outputs, batch_idx)

    def on_train_epoch_end(self) -> None:
        self._log("train/skipped_steps", float(self.skipped_steps), on_epoch=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = nonfinite_tensors(checkpoint["state_dict"])
        if bad:
            raise NonFiniteTrainingError(
                f"refusing to write a checkpoint at step {self.global_step}: {len(bad)} tensors hold NaN or inf "
                f"({listing(bad)})"
            )

    def _log(self, name: str, value: Any, on_step: bool = False, on_epoch: bool = False, sync_dist: bool = False):
        suffix = "step" if on_step and not on_epoch else "epoch"
        self.log(
            f"{name}/{suffix}",
            value,
            logger=True,
            on_step=on_step,
            on_epoch=on_epoch,
            sync_dist=sync_dist,
            batch_size=self._batch_size,
        )


def _skip_empty_batch(step: Callable[..., Any]) -> Callable[..., Any]:
    """``step``, except that a None batch (all its items failed to load) is skipped."""
    if getattr(step, "skips_empty_batch", False):
        return step

    @functools.wraps(step)
    def skipping(self: CTFMModule, batch: Any, *args: Any, **kwargs: Any) -> Any:
        return None if batch is None else step(self, batch, *args, **kwargs)

    skipping.skips_empty_batch = True  # type: ignore[attr-defined]
    return skipping


def expect_frozen_modules_in_eval() -> None:
    """Silence Lightning's warning about modules in eval mode at the start of a fit: a frozen teacher or denoiser is
    kept in eval mode on purpose (its normalisation statistics must not move), and the warning lists every one."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def _describe(batch: Any) -> str:
    """The scans of a batch by name, from its ``image`` paths or the MetaTensor's file names."""
    names: Sequence[Any] = ()
    if isinstance(batch, dict):
        image = batch.get("image")
        if isinstance(image, (list, tuple)):
            names = image
        elif image is not None and hasattr(image, "meta"):
            names = image.meta.get("filename_or_obj", ())
    names = [str(name) for name in (names if isinstance(names, (list, tuple)) else [names])]
    if not names:
        return "unknown"
    more = f" and {len(names) - _NAMED_SCANS} more" if len(names) > _NAMED_SCANS else ""
    return ", ".join(names[:_NAMED_SCANS]) + more
