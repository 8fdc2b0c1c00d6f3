"""Shared fixtures: one small synthetic torso CT as arrays, as a NIfTI file and as a DICOM series; a tiny BERT.

They are built once per session and shared, so treat them as read-only (copy before changing anything). Imports
happen inside the fixtures: collecting the tests must not pull in torch or MONAI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Small enough to build in a few milliseconds, big enough for every tissue and one resampled patch.
SAMPLE_SHAPE = (32, 96, 96)
SAMPLE_SPACING = (2.5, 1.0, 1.0)
SAMPLE_SEED = 7


@pytest.fixture(scope="session")
def sample_ct():
    """A :class:`ctfm.data.sample.SampleCT` of SAMPLE_SHAPE (z, y, x) at SAMPLE_SPACING mm."""
    from ctfm.data.sample import generate_ct

    return generate_ct(SAMPLE_SHAPE, SAMPLE_SPACING, seed=SAMPLE_SEED)


@pytest.fixture(scope="session")
def sample_nifti(sample_ct, tmp_path_factory) -> Path:
    """``sample_ct`` written as an int16 ``.nii.gz``."""
    from ctfm.data.sample import write_nifti

    return write_nifti(sample_ct, tmp_path_factory.mktemp("sample_nifti") / "sample.nii.gz")


@pytest.fixture(scope="session")
def sample_dicom_dir(sample_ct, tmp_path_factory) -> Path:
    """``sample_ct`` written as a DICOM CT series (one file per slice, unsigned storage, intercept -1024)."""
    from ctfm.data.sample import write_dicom_series

    return write_dicom_series(sample_ct, tmp_path_factory.mktemp("sample_dicom") / "series")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A Hugging Face text encoder for the text-conditioning tests, built offline: a folder of save_pretrained
    files holding a 1-layer, 16-wide BERT and its WordPiece tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "chest", "head", "ct", "lung", "nodule", "contrast", ","]
    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config).save_pretrained(folder)
    return folder
