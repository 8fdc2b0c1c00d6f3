"""Self-supervised pretraining modules."""

from ctfm.ssl.simclr import IntraSampleSimCLR

__all__ = ["IntraSampleSimCLR"]
