"""Training tasks: one LighterModule a file, each on :class:`~ctfm.tasks.base.CTFMModule`."""

from ctfm.tasks.base import CTFMModule, NonFiniteTrainingError
from ctfm.tasks.ddpm import DDPMPretraining
from ctfm.tasks.distillation import EmbeddingDistillation
from ctfm.tasks.segmentation import SegmentationModule
from ctfm.tasks.simclr import IntraSampleSimCLR

__all__ = [
    "CTFMModule",
    "DDPMPretraining",
    "EmbeddingDistillation",
    "IntraSampleSimCLR",
    "NonFiniteTrainingError",
    "SegmentationModule",
]
