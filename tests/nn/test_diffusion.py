"""The diffusion denoiser, sampler and restoration operators: one class for 2D and 3D, only spatial_dims changes."""

import pytest
import torch

from ctfm.errors import CTFMError
from ctfm.nn.diffusion import NULL_WINDOW, diffusion_unet
from ctfm.nn.diffusion.operators import Downsample, ParallelBeam
from ctfm.nn.diffusion.sampling import sample

SHAPES = {2: (16, 16), 3: (8, 16, 16)}


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


def tiny(spatial_dims):
    """A randomly initialised tiny denoiser; MONAI zero-initialises the output and attention projections, which
    would make every prediction zero and the condition invisible."""
    torch.manual_seed(0)
    network = diffusion_unet(spatial_dims, "tiny").eval()
    for parameter in network.parameters():
        if parameter.ndim > 1 and not parameter.detach().any():
            torch.nn.init.normal_(parameter, std=0.05)
    return network


def test_window_condition_changes_the_prediction_and_null_is_one_token(spatial_dims):
    network = tiny(spatial_dims)
    torch.nn.init.normal_(network.embedding.null_token)
    x = torch.randn(1, 1, *SHAPES[spatial_dims]).expand(4, 1, *SHAPES[spatial_dims])
    t = torch.full((4,), 500)
    windows = torch.tensor([[1500.0, -500.0], [400.0, 0.0], [NULL_WINDOW, NULL_WINDOW], [0.0, 40.0]])
    with torch.no_grad():
        out = network(x, t, windows)
        context = network.embedding(windows)
        unconditioned = network(x[:1], t[:1], None)
    assert out.shape == (4, 1, *SHAPES[spatial_dims])
    assert not torch.allclose(out[0], out[1])
    # Every width <= 0 is the null condition; None means null too.
    torch.testing.assert_close(context[2], context[3])
    torch.testing.assert_close(context[2, 0], network.embedding.null_token.detach())
    torch.testing.assert_close(unconditioned, out[2:3])


def test_window_reaches_every_residual_block_not_only_attention(spatial_dims):
    """With no attention level at all, the window still changes the prediction: it enters the timestep embedding."""
    torch.manual_seed(0)
    network = diffusion_unet(spatial_dims, "tiny", attention_levels=(False, False, False)).eval()
    for parameter in network.parameters():
        if parameter.ndim > 1 and not parameter.detach().any():
            torch.nn.init.normal_(parameter, std=0.05)
    x = torch.randn(1, 1, *SHAPES[spatial_dims]).expand(2, 1, *SHAPES[spatial_dims])
    with torch.no_grad():
        out = network(x, torch.full((2,), 300), torch.tensor([[1500.0, -500.0], [400.0, 0.0]]))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_sampling_is_deterministic_bounded_and_guidance_matters(spatial_dims):
    network = tiny(spatial_dims)
    shape = SHAPES[spatial_dims]

    def run(scale):
        generator = torch.Generator().manual_seed(1)
        return sample(network, shape, (1500, -500), n=2, steps=2, guidance_scale=scale, generator=generator)

    plain, guided = run(1.0), run(3.0)
    assert plain.shape == (2, 1, *shape) and plain.abs().max() <= 1
    torch.testing.assert_close(plain, run(1.0))
    assert not torch.allclose(plain, guided)


@pytest.mark.parametrize("factor", [2, 4])
def test_super_resolution_output_down_sampled_equals_the_input(spatial_dims, factor):
    network = tiny(spatial_dims)
    shape = SHAPES[spatial_dims]
    operator = Downsample(factor, spatial_dims)
    truth = torch.rand(1, 1, *shape) * 2 - 1
    low = operator.forward(truth)
    restored = sample(network, shape, (1500, -500), steps=4, operator=operator, measurement=low)
    assert restored.shape == truth.shape
    torch.testing.assert_close(operator.forward(restored), low, atol=1e-5, rtol=0)
    assert not torch.allclose(restored, torch.nn.functional.interpolate(low, scale_factor=factor))


def test_a_warm_start_walks_only_the_steps_below_its_strength_and_stays_consistent(spatial_dims):
    network = tiny(spatial_dims)
    shape = SHAPES[spatial_dims]
    operator = Downsample(2, spatial_dims)
    truth = torch.rand(1, 1, *shape) * 2 - 1
    low = operator.forward(truth)
    guess = torch.nn.functional.interpolate(low, scale_factor=2)
    calls = []
    network.register_forward_hook(lambda module, inputs, output: calls.append(int(inputs[1][0])))

    def run(**kwargs):
        calls.clear()
        generator = torch.Generator().manual_seed(2)
        return sample(network, shape, (1500, -500), steps=10, operator=operator, measurement=low,
                      generator=generator, **kwargs)  # fmt: skip

    cold = run()
    assert len(calls) == 10
    torch.testing.assert_close(run(init=guess, strength=1.0), cold)  # strength 1: pure noise, init unused
    warm = run(init=guess, strength=0.3)
    assert calls == [222, 111, 0]  # MONAI's 10 DDIM steps are 999, 888, ..., 0; those at or below 300 are walked
    torch.testing.assert_close(operator.forward(warm), low, atol=1e-5, rtol=0)
    assert not torch.allclose(warm, cold)
    with pytest.raises(CTFMError, match=r"strength must be in \(0, 1\]"):
        run(init=guess, strength=0.0)
    with pytest.raises(CTFMError, match="init has shape"):
        run(init=guess[..., :-2], strength=0.5)


def test_bad_window_and_mismatched_measurement_fail_before_sampling(spatial_dims):
    network = tiny(spatial_dims)
    shape = SHAPES[spatial_dims]
    with pytest.raises(CTFMError, match="window width must be > 0"):
        sample(network, shape, (0, -500), steps=2)
    operator = Downsample(2, spatial_dims)
    wrong = torch.zeros(1, 1, *(s // 4 for s in shape))
    with pytest.raises(CTFMError, match="measurement has shape"):
        sample(network, shape, None, steps=2, operator=operator, measurement=wrong)


def test_sparse_view_restoration_fits_the_projections():
    from ctfm.data.sample import generate_ct
    from ctfm.transforms.width_level import apply_window

    ct = generate_ct((8, 64, 64), (2.5, 4.0, 4.0), seed=3)
    truth = apply_window(torch.from_numpy(ct.hu[4].copy()), 1500, -500)[None, None]
    truth = torch.nn.functional.interpolate(truth, size=(32, 32), mode="area")
    operator = ParallelBeam.sparse(12)
    sinogram = operator.forward(truth)
    fbp = operator.filtered_back_projection(sinogram)
    network = tiny(2)
    restored = sample(network, (32, 32), (1500, -500), steps=4, operator=operator, measurement=sinogram)
    unguided = sample(network, (32, 32), (1500, -500), steps=4)

    def residual(image):
        return float((operator.forward(image) - sinogram).norm() / sinogram.norm())

    assert restored.shape == truth.shape
    assert residual(restored) < 0.2 < residual(unguided)
    assert residual(fbp) < 0.2
    with pytest.raises(CTFMError, match="ParallelBeam is 2D"):
        operator.forward(torch.zeros(1, 1, 8, 32, 32))


def test_adapter_features_and_heads(spatial_dims):
    from ctfm.nn.diffusion.features import BottleneckClassifier, DiffusionFeatures, PixelMLP

    shape = SHAPES[spatial_dims]
    extractor = DiffusionFeatures(tiny(spatial_dims), timesteps=(10, 400))
    images = torch.rand(2, 1, *shape) * 2 - 1
    decoder, bottleneck = extractor(images)
    assert decoder.shape == (2, extractor.decoder_channels, *shape)
    assert bottleneck.shape[:2] == (2, extractor.bottleneck_channels)
    again, _ = extractor(images)
    torch.testing.assert_close(decoder, again)  # the same noise every time
    half = decoder.shape[1] // 2
    assert not torch.allclose(decoder[:, :half], decoder[:, half:])  # one block of channels per timestep
    assert not any(p.requires_grad for p in extractor.network.parameters())
    assert PixelMLP(spatial_dims, decoder.shape[1], 3)(decoder).shape == (2, 3, *shape)
    assert BottleneckClassifier(spatial_dims, bottleneck.shape[1], 2, width=16)(bottleneck).shape == (2, 2)
