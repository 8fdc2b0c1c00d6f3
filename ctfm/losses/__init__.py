"""Contrastive and distillation losses."""

from ctfm.losses.ntxent import IntraSampleNTXentLoss

__all__ = ["IntraSampleNTXentLoss"]
