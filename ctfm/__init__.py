"""ctfm: native-3D contrastive CT foundation models."""

__version__ = "0.1.0"
