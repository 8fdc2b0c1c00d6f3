"""Networks: the CT-FM encoder, SegResNetDS with a CT-FM encoder, and heads."""

from ctfm.nn.contrastive import ContrastiveNetwork
from ctfm.nn.encoder import ARCHITECTURES, build_model, ct_fm_encoder, ct_fm_segresnet, encoder_of, pooled_features
from ctfm.nn.heads import ProjectionHead

__all__ = [
    "ARCHITECTURES",
    "ContrastiveNetwork",
    "ProjectionHead",
    "build_model",
    "ct_fm_encoder",
    "ct_fm_segresnet",
    "encoder_of",
    "pooled_features",
]
