"""Fine-tuning starts the encoder from pretrained weights (strictly) and freezes it as asked."""

import pytest
import torch

from ctfm.errors import ModelLoadError
from ctfm.hub import load, save_pretrained
from ctfm.nn import ct_fm_encoder, ct_fm_segresnet
from ctfm.tasks.finetune import FineTuneModule, load_pretrained_encoder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(1)
    return save_pretrained(ct_fm_encoder(init_filters=4), tmp_path_factory.mktemp("pretrained"))


def test_a_segresnet_starts_from_an_exported_encoder(pretrained):
    network = ct_fm_segresnet(init_filters=4, out_channels=3)
    message = load_pretrained_encoder(network, str(pretrained))
    assert message == f"loaded 161 encoder tensors from {pretrained}"
    expected = load(pretrained).state_dict()
    for key, value in network.encoder.state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_none_keeps_random_init_and_a_wrong_width_fails_naming_the_keys(pretrained):
    network = ct_fm_segresnet(init_filters=8)
    before = {k: v.clone() for k, v in network.encoder.state_dict().items()}
    assert "randomly initialised" in load_pretrained_encoder(network, "none")
    assert all(torch.equal(before[k], v) for k, v in network.encoder.state_dict().items())
    with pytest.raises(ModelLoadError, match="wrong shape: conv_init.weight"):
        load_pretrained_encoder(network, str(pretrained))


@pytest.mark.parametrize("freeze, frozen_epochs", [(False, []), (True, [0, 1, 2]), (2, [0, 1])])
def test_freeze_encoder_for_all_or_the_first_epochs(freeze, frozen_epochs):
    module = FineTuneModule(network=ct_fm_segresnet(init_filters=4), freeze_encoder=freeze)
    assert [e for e in range(3) if module.encoder_frozen(e)] == frozen_epochs
