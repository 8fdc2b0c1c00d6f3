"""Networks: the CT-FM encoder, SegResNetDS with a CT-FM encoder, and heads."""

from ctfm.nn.classifier import ScanClassifier
from ctfm.nn.contrastive import ContrastiveNetwork
from ctfm.nn.distillation import DistillationStudent, embedding_width
from ctfm.nn.encoder import CT_FM_CONFIG, ct_fm_encoder, ct_fm_segresnet, encoder_of, pooled_features
from ctfm.nn.heads import ClassificationHead, ProjectionHead

__all__ = [
    "CT_FM_CONFIG",
    "ClassificationHead",
    "ContrastiveNetwork",
    "DistillationStudent",
    "ProjectionHead",
    "ScanClassifier",
    "ct_fm_encoder",
    "ct_fm_segresnet",
    "embedding_width",
    "encoder_of",
    "pooled_features",
]
