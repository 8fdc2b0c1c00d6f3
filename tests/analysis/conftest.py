"""Fixtures of the similarity-label tests: tests/labelled_sample.py builds their data."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def labelled(tmp_path_factory):
    from labelled_sample import make_labelled

    return make_labelled(tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="session")
def tiny_encoder():
    import torch

    from ctfm.nn import ct_fm_encoder

    torch.manual_seed(0)
    return ct_fm_encoder(init_filters=4).eval()
