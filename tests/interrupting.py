"""A callback that interrupts a fit, importable by name from a recipe override (``tests`` is on the path)."""

import os
import signal

import pytorch_lightning as pl


class Interrupt(pl.Callback):
    """Interrupts the fit after training step ``at`` (``None``: before the first): KeyboardInterrupt, or SIGTERM
    sent to this process."""

    def __init__(self, at: int, how: str):
        self.at = at
        self.how = how

    def on_train_start(self, trainer, pl_module):
        if self.at is None:
            raise KeyboardInterrupt

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.at:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler stops the loop after this batch
            else:
                raise KeyboardInterrupt
