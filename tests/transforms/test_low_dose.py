"""The low-dose simulator: Poisson noise in the projection domain (2D) or Gaussian noise (3D), one class, seeded."""

import numpy as np
import pytest
import torch

from ctfm.data.sample import generate_ct
from ctfm.errors import CTFMError
from ctfm.transforms.low_dose import SimulateLowDose, SimulateLowDosed, hu_to_attenuation


@pytest.fixture(scope="module")
def torso():
    """A synthetic torso, (1, z, y, x) HU at 3 mm in-plane, and its body mask."""
    ct = generate_ct((8, 64, 64), (2.5, 3.0, 3.0), seed=0)
    hu = torch.from_numpy(np.asarray(ct.hu, dtype=np.float32))[None]
    return hu, hu > -500


def simulate(image, spatial_dims, seed=0, **kwargs):
    transform = SimulateLowDose(spatial_dims, pixel_mm=3.0, **kwargs)
    transform.set_random_state(seed)
    return transform(image)


def test_attenuation_is_zero_in_air_and_water_at_zero_hu():
    mu = hu_to_attenuation(np.array([-1024.0, -1000.0, 0.0, 1000.0]), mu_water=0.02)
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.02, 0.04])


def test_poisson_noise_rises_as_the_photon_count_falls(torso):
    hu, body = torso
    image, inside = hu[:, 4], body[0, 4]
    stds = []
    for i0 in (1e6, 1e5, 1e4, 1e3):
        noise = (simulate(image, 2, i0=i0) - image)[0]
        assert noise.shape == image.shape[1:]
        stds.append(float(noise[inside].std()))
        # Noise, not a bias: the body's mean HU moves by far less than the noise.
        assert abs(float(noise[inside].mean())) < 0.2 * stds[-1]
    assert stds == sorted(stds) and stds[-1] > 10 * stds[0]
    # Quantum noise scales as 1 / sqrt(I0): 100x fewer photons, about 10x the noise.
    assert 5 < stds[2] / stds[0] < 20


def test_seeded_and_the_same_class_in_3d(torso):
    hu, body = torso
    image = hu[:, 4]
    torch.testing.assert_close(simulate(image, 2, seed=3), simulate(image, 2, seed=3))
    assert not torch.equal(simulate(image, 2, seed=3), simulate(image, 2, seed=4))
    volume = simulate(hu, 3, sigma=40.0)  # Gaussian by default in 3D
    assert volume.shape == hu.shape and volume.dtype == hu.dtype
    assert abs(float((volume - hu).std()) - 40.0) < 1.0
    poisson_3d = simulate(hu[:, :2], 3, noise="poisson", i0=1e4)  # slice by slice along z
    torch.testing.assert_close(poisson_3d[:, 0], simulate(hu[:, 0], 2, i0=1e4), rtol=0, atol=1e3)
    assert poisson_3d.shape == hu[:, :2].shape and not torch.equal(poisson_3d[:, 0], poisson_3d[:, 1])


def test_a_non_square_slice_keeps_its_grid(torso):
    hu, _ = torso
    image = hu[:, 4, 8:56, :]  # 48 x 64: the body stays where it was, the noise is added in place
    low = simulate(image, 2, i0=1e6)
    assert low.shape == image.shape
    assert float((low - image).abs().median()) < 20


def test_dictionary_form_adds_a_key_and_bad_input_is_refused(torso):
    hu, _ = torso
    transform = SimulateLowDosed("image", spatial_dims=3, sigma=10.0)
    transform.set_random_state(0)
    out = transform({"image": hu, "other": 1})
    assert set(out) == {"image", "image_low", "other"} and out["image"] is hu
    assert out["image_low"].shape == hu.shape and not torch.equal(out["image_low"], hu)
    with pytest.raises(CTFMError, match="needs \\(C, \\*spatial\\) arrays of 3 dimensions"):
        SimulateLowDose(2)(hu)
    with pytest.raises(CTFMError, match="i0 must be > 0"):
        SimulateLowDose(2, i0=0)
    with pytest.raises(CTFMError, match="unknown low-dose noise model"):
        SimulateLowDose(3, noise="speckle")
