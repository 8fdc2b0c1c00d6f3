"""CT preprocessing and contrastive view generation."""

from ctfm.transforms.preprocess import CTPreprocessing, LoadCT

__all__ = ["CTPreprocessing", "LoadCT"]
