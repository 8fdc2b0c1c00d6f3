"""Cold-diffusion low-dose enhancement: one class for 2D and 3D, only spatial_dims changes."""

import pytest
import torch
from recipe_runner import RECIPES
from sparkwheel import Config
from torch import nn

from ctfm.errors import CTFMError
from ctfm.nn.diffusion import diffusion_unet
from ctfm.recipes import load_recipe
from ctfm.tasks.cold_diffusion import ColdDiffusion

SHAPES = {2: (16, 16), 3: (8, 16, 16)}
WINDOW = [3072.0, 512.0]


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


def pair(spatial_dims, n=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    full = torch.rand(n, 1, *SHAPES[spatial_dims], generator=generator) * 1.6 - 0.8
    low = full + 0.1 * torch.randn(full.shape, generator=generator)
    return {"image": full, "low_dose": low, "window": torch.tensor([WINDOW] * n), "case": [f"c{i}" for i in range(n)]}


class Oracle(nn.Module):
    """A 'network' whose residual lands exactly on the full-dose image, to check the sampler's algebra."""

    def __init__(self, spatial_dims, full):
        super().__init__()
        self.spatial_dims, self.full, self.calls = spatial_dims, full, []

    def forward(self, x, timesteps, context=None):
        self.calls.append(timesteps.tolist())
        return self.full - x


def test_degradation_walks_from_full_dose_at_zero_to_low_dose_at_t(spatial_dims):
    module = ColdDiffusion(diffusion_unet(spatial_dims, "tiny"), steps=4)
    batch = pair(spatial_dims)
    full, low = batch["image"], batch["low_dose"]
    torch.testing.assert_close(module.degrade(full, low, torch.zeros(2, dtype=torch.long)), full)
    torch.testing.assert_close(module.degrade(full, low, torch.full((2,), 4)), low)
    middle = module.degrade(full, low, torch.tensor([1, 3]))
    torch.testing.assert_close(middle[0], 0.75 * full[0] + 0.25 * low[0])
    torch.testing.assert_close(middle[1], 0.25 * full[1] + 0.75 * low[1])


def test_sampler_recovers_the_full_dose_image_from_a_perfect_restorer(spatial_dims):
    batch = pair(spatial_dims)
    oracle = Oracle(spatial_dims, batch["image"])
    module = ColdDiffusion(oracle, steps=5)
    restored = module.restore(batch["low_dose"], batch["window"])
    torch.testing.assert_close(restored, batch["image"])
    # T steps from t = T down to 1, on the pretraining's 0..999 timestep scale.
    assert [calls[0] for calls in oracle.calls] == [999, 799, 599, 399, 199]


def test_untrained_network_returns_its_input_and_training_lowers_the_loss(spatial_dims):
    torch.manual_seed(0)
    network = diffusion_unet(spatial_dims, "tiny")
    module = ColdDiffusion(network, steps=3)
    batch = pair(spatial_dims)
    torch.testing.assert_close(module.restore(batch["low_dose"], batch["window"]), batch["low_dose"].clamp(-1, 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    # A 3D step of even the tiny preset takes seconds on a CPU: 3D takes one step (its training runs in the
    # recipe test), 2D enough to see the loss fall.
    losses = []
    for _ in range(25 if spatial_dims == 2 else 1):
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert network.unet.out[-1].conv.weight.grad.abs().sum() > 0
    if spatial_dims == 2:
        assert sum(losses[-5:]) < 0.7 * sum(losses[:5])
    with pytest.raises(CTFMError, match=f"the network is {spatial_dims}D"):
        module.compute_loss({**batch, "image": batch["image"][:, 0]})


def test_evaluation_scores_low_dose_and_restored_in_hu_per_case(spatial_dims):
    module = ColdDiffusion(diffusion_unet(spatial_dims, "tiny"), steps=2)
    batch = pair(spatial_dims)
    out = module.validation_step(batch, 0)
    assert out["pred"].shape == batch["image"].shape
    assert [row["case"] for row in module.case_rows] == ["c0", "c1"]
    row = module.case_rows[0]
    # An untrained restorer returns the low-dose input, so both score the same; noise of 0.1 in [-1, 1] at the
    # 3072 HU window is about 154 HU.
    assert row["psnr_restored"] == pytest.approx(row["psnr_low_dose"], abs=1e-3)
    assert 120 < row["rmse_low_dose"] < 190 and 0 < row["ssim_low_dose"] < 1


def make_checkpoint(path, spatial_dims, preset="tiny"):
    """A pretraining checkpoint as lighter writes it (config and state), untrained."""
    config = Config().update(load_recipe(RECIPES / "diffusion" / f"pretrain_{spatial_dims}d.yaml"))
    config.update(f"vars::preset={preset}")
    model = config.resolve("model")
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {"config": config.get()}}, path)
    return path


def test_pretrained_weights_load_and_another_dimension_or_preset_is_refused(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "pre2d.ckpt", 2)
    module = ColdDiffusion(diffusion_unet(2, "tiny"), pretrained=checkpoint)
    stored = torch.load(checkpoint, weights_only=True)["state_dict"]
    torch.testing.assert_close(
        module.network.unet.conv_in.conv.weight.detach(), stored["network.unet.conv_in.conv.weight"]
    )
    # A trained prior's noise-predicting output layer is zeroed: the restoration starts from the identity.
    stored["network.unet.out.2.conv.weight"].normal_()
    torch.save({**torch.load(checkpoint, weights_only=False), "state_dict": stored}, checkpoint)
    module = ColdDiffusion(diffusion_unet(2, "tiny"), pretrained=checkpoint)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    torch.testing.assert_close(module.restore_step(x, torch.tensor([3, 7]), None), x)
    with pytest.raises(CTFMError, match="holds a 2D denoiser, but spatial_dims is 3"):
        ColdDiffusion(diffusion_unet(3, "tiny"), pretrained=checkpoint)
    with pytest.raises(CTFMError, match="another preset"):
        ColdDiffusion(diffusion_unet(2, "small"), pretrained=checkpoint)
    with pytest.raises(CTFMError, match="at least one step"):
        ColdDiffusion(diffusion_unet(2, "tiny"), steps=0)
