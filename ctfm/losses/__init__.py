"""Contrastive, distillation and segmentation losses."""

from ctfm.losses.distillation import EmbeddingDistillationLoss
from ctfm.losses.ntxent import IntraSampleNTXentLoss
from ctfm.losses.segmentation import CrossEntropyFocalLoss, deep_supervision_dice_ce

__all__ = ["CrossEntropyFocalLoss", "EmbeddingDistillationLoss", "IntraSampleNTXentLoss", "deep_supervision_dice_ce"]
