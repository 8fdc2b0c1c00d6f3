"""Contrastive and distillation losses."""

from ctfm.losses.distillation import EmbeddingDistillationLoss
from ctfm.losses.ntxent import IntraSampleNTXentLoss

__all__ = ["EmbeddingDistillationLoss", "IntraSampleNTXentLoss"]
