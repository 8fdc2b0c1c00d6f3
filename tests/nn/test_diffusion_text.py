"""Optional free-text conditioning: a frozen Hugging Face encoder (conftest's tiny BERT, built offline), 2D and 3D."""

import sys

import pytest
import torch

from ctfm.errors import CTFMError
from ctfm.nn.diffusion import diffusion_unet
from ctfm.nn.diffusion.sampling import sample
from ctfm.nn.diffusion.text import HuggingFaceTextEncoder

SHAPES = {2: (16, 16), 3: (8, 16, 16)}


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


def text_unet(spatial_dims, tiny_bert):
    torch.manual_seed(0)
    network = diffusion_unet(
        spatial_dims, "tiny", text_encoder=HuggingFaceTextEncoder(str(tiny_bert), max_length=8, local_files_only=True)
    ).eval()
    for parameter in network.parameters():  # MONAI zero-initialises output and attention projections
        if parameter.requires_grad and parameter.ndim > 1 and not parameter.detach().any():
            torch.nn.init.normal_(parameter, std=0.05)
    return network


def test_the_encoder_gives_fixed_length_tokens_and_stays_frozen(tiny_bert):
    encoder = HuggingFaceTextEncoder(str(tiny_bert), max_length=8, local_files_only=True)
    tokens = encoder(["chest ct, lung nodule", "", "head ct"])
    assert tokens.shape == (3, 8, 16) and encoder.dim == 16
    assert not torch.allclose(tokens[0], tokens[2])
    encoder.train()
    assert not encoder.model.training and not any(p.requires_grad for p in encoder.parameters())
    torch.testing.assert_close(encoder(["head ct"]), tokens[2:])  # no dropout: the same caption, the same tokens


def test_captions_change_the_prediction_and_none_is_the_empty_caption(spatial_dims, tiny_bert):
    network = text_unet(spatial_dims, tiny_bert)
    x = torch.randn(1, 1, *SHAPES[spatial_dims]).expand(3, 1, *SHAPES[spatial_dims])
    t, window = torch.full((3,), 400), torch.tensor([[1500.0, -500.0]] * 3)
    with torch.no_grad():
        out = network(x, t, window, texts=["chest ct, lung nodule", "head ct", ""])
        uncaptioned = network(x[:1], t[:1], window[:1])
    assert not torch.allclose(out[0], out[1])
    torch.testing.assert_close(uncaptioned, out[2:])
    with pytest.raises(CTFMError, match="2 captions for a batch of 3"):
        network(x, t, window, texts=["a", "b"])


def test_sampling_from_a_caption_is_deterministic_and_differs_from_none(spatial_dims, tiny_bert):
    network = text_unet(spatial_dims, tiny_bert)

    def run(text, scale=1.0):
        generator = torch.Generator().manual_seed(1)
        return sample(network, SHAPES[spatial_dims], None, n=2, steps=2, text=text, guidance_scale=scale,
                      generator=generator)  # fmt: skip

    captioned = run("chest ct")
    torch.testing.assert_close(captioned, run("chest ct"))
    assert not torch.allclose(captioned, run(None))
    assert not torch.allclose(captioned, run("chest ct", scale=3.0))  # guidance extrapolates from the empty caption


def test_a_caption_without_a_text_encoder_is_refused(spatial_dims):
    network = diffusion_unet(spatial_dims, "tiny").eval()
    with pytest.raises(CTFMError, match="without a text encoder"):
        sample(network, SHAPES[spatial_dims], (1500, -500), steps=2, text="chest ct")
    x = torch.zeros(1, 1, *SHAPES[spatial_dims])
    with pytest.raises(CTFMError, match="without a text encoder"):
        network(x, torch.tensor([1]), None, texts=["chest ct"])


def test_a_text_encoder_without_its_token_width_is_refused():
    with pytest.raises(CTFMError, match="text_encoder Identity needs an int `dim`"):
        diffusion_unet(2, "tiny", text_encoder=torch.nn.Identity())


def test_missing_transformers_or_model_is_one_line(tiny_bert, tmp_path, monkeypatch):
    with pytest.raises(CTFMError, match=r"could not be loaded") as error:
        HuggingFaceTextEncoder(str(tmp_path / "no-such-model"), local_files_only=True)
    assert "\n" not in str(error.value)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CTFMError, match=r"pip install 'ctfm\[text\]'"):
        HuggingFaceTextEncoder(str(tiny_bert))
