"""Training tasks: one LighterModule a file, each on :class:`~ctfm.tasks.base.CTFMModule`."""

from ctfm.tasks.base import CTFMModule, NonFiniteTrainingError
from ctfm.tasks.segmentation import SegmentationModule
from ctfm.tasks.simclr import IntraSampleSimCLR

__all__ = ["CTFMModule", "IntraSampleSimCLR", "NonFiniteTrainingError", "SegmentationModule"]
