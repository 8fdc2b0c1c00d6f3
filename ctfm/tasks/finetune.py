"""What fine-tuning tasks share: where the encoder starts from, and whether it is frozen.

Segmentation (a SegResNetDS) and classification (encoder + head) both hold a SegResEncoder at
``network.encoder``; :class:`FineTuneModule` starts it from pretrained weights and freezes it, for all of training
or its first epochs, so a decoder-only (or head-only) run and a full fine-tune are one setting apart.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ctfm.hub.loading import load, load_state_dict_strict
from ctfm.nn.encoder import encoder_of
from ctfm.tasks.base import CTFMModule

#: Values of ``weights`` that mean "random initialisation" (the baseline).
NO_WEIGHTS = (None, "", "none", "None", "null")


def load_pretrained_encoder(network: nn.Module, weights: str | None) -> str:
    """Copy the encoder of ``weights`` into ``network``'s encoder, strictly; returns what was loaded from where.

    ``weights`` is a registry name (``ct-fm``), a Hub-format folder (``ctfm export`` writes one), a
    ``.safetensors`` file or a Hub repo id, of a SegResEncoder or of a SegResNetDS whose encoder is taken;
    ``none`` keeps the random initialisation.
    """
    target = encoder_of(network)
    if weights in NO_WEIGHTS:
        return "encoder randomly initialised (weights: none)"
    source = encoder_of(load(str(weights)))
    state = source.state_dict()
    load_state_dict_strict(target, state, source=f"encoder weights {weights}")
    return f"loaded {len(state)} encoder tensors from {weights}"


class FineTuneModule(CTFMModule):
    """A ``CTFMModule`` whose ``network.encoder`` starts from ``weights`` and is frozen per ``freeze_encoder``.

    Args:
        weights: see :func:`load_pretrained_encoder`; loaded once, when the module is built.
        freeze_encoder: ``False`` trains everything; ``True`` freezes the encoder for the whole run; an integer N
            freezes it for the first N epochs. A frozen encoder gets no gradients and keeps its BatchNorm statistics.
        args: passed to :class:`~ctfm.tasks.base.CTFMModule` (network, criterion, optimizer, scheduler).
        kwargs: passed to :class:`~ctfm.tasks.base.CTFMModule`.
    """

    def __init__(self, *args: Any, weights: str | None = None, freeze_encoder: bool | int = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if not isinstance(freeze_encoder, (bool, int)) or freeze_encoder < 0:
            raise ValueError(f"freeze_encoder must be true, false or a number of epochs, got {freeze_encoder!r}")
        self.weights = weights
        self.freeze_encoder = freeze_encoder
        self.weights_report = load_pretrained_encoder(self.network, weights)
        rank_zero_info(self.weights_report)

    def encoder_frozen(self, epoch: int) -> bool:
        """Whether the encoder is frozen during ``epoch`` (counted from 0)."""
        if isinstance(self.freeze_encoder, bool):
            return self.freeze_encoder
        return epoch < self.freeze_encoder

    def on_train_epoch_start(self) -> None:
        frozen = self.encoder_frozen(self.current_epoch)
        encoder = encoder_of(self.network)
        encoder.requires_grad_(not frozen)
        if frozen:
            encoder.eval()  # keep the pretrained BatchNorm statistics
