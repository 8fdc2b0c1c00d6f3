"""The SimCLR module's first home, kept so configs and checkpoints naming ``ctfm.ssl.IntraSampleSimCLR`` resolve.

New code imports it from :mod:`ctfm.tasks`.
"""

from ctfm.tasks.simclr import IntraSampleSimCLR

__all__ = ["IntraSampleSimCLR"]
