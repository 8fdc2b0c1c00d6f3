"""Training tasks: one LighterModule a file, each on :class:`~ctfm.tasks.base.CTFMModule`, and the callbacks recipes
name."""

from ctfm.tasks.base import CTFMModule, NonFiniteTrainingError
from ctfm.tasks.callbacks import InterruptedCheckpoint
from ctfm.tasks.classification import ScanClassification
from ctfm.tasks.cold_diffusion import ColdDiffusion
from ctfm.tasks.ddpm import DDPMPretraining
from ctfm.tasks.diffusion_adapters import DiffusionClassificationAdapter, DiffusionSegmentationAdapter
from ctfm.tasks.distillation import EmbeddingDistillation
from ctfm.tasks.embedding import CorpusEmbedding
from ctfm.tasks.finetune import FineTuneModule
from ctfm.tasks.quiet import QuietLightning
from ctfm.tasks.segmentation import SegmentationModule
from ctfm.tasks.simclr import IntraSampleSimCLR

__all__ = [
    "CTFMModule",
    "ColdDiffusion",
    "CorpusEmbedding",
    "DDPMPretraining",
    "DiffusionClassificationAdapter",
    "DiffusionSegmentationAdapter",
    "EmbeddingDistillation",
    "FineTuneModule",
    "InterruptedCheckpoint",
    "IntraSampleSimCLR",
    "NonFiniteTrainingError",
    "QuietLightning",
    "ScanClassification",
    "SegmentationModule",
]
