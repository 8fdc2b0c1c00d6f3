"""The diffusion adapters: one class for 2D and 3D (only spatial_dims changes), a frozen denoiser, per-case metrics."""

import math

import pytest
import torch

from ctfm.errors import CTFMError
from ctfm.hub.checkpoint import pretrained_denoiser
from ctfm.nn.diffusion import diffusion_unet
from ctfm.nn.diffusion.adapter import classification_adapter, segmentation_adapter
from ctfm.tasks.diffusion_adapters import DiffusionClassificationAdapter, DiffusionSegmentationAdapter, dice_per_case

SHAPES = {2: (16, 16), 3: (8, 16, 16)}


@pytest.fixture(params=[2, 3], ids=["2d", "3d"])
def spatial_dims(request):
    return request.param


def denoiser(spatial_dims):
    """A tiny random denoiser; MONAI zero-initialises output and attention projections, which would hide the input."""
    torch.manual_seed(0)
    network = diffusion_unet(spatial_dims, "tiny")
    for parameter in network.parameters():
        if parameter.ndim > 1 and not parameter.detach().any():
            torch.nn.init.normal_(parameter, std=0.05)
    return network


def square_case(spatial_dims, n=2):
    """Images in [-1, 1] with a bright centred box (label 1) on a dark background, as a training batch."""
    shape = SHAPES[spatial_dims]
    labels = torch.zeros(n, 1, *shape, dtype=torch.long)
    labels[(slice(None), slice(None), *(slice(s // 4, 3 * s // 4) for s in shape))] = 1
    images = labels.float() * 1.2 - 0.6 + 0.05 * torch.randn(n, 1, *shape)
    return {"image": images, "label": labels}


def segmenter(spatial_dims, **kwargs):
    network = segmentation_adapter(denoiser(spatial_dims), 2, timesteps=(20, 200), hidden=(16,))
    module = DiffusionSegmentationAdapter(network, SHAPES[spatial_dims], **kwargs)
    return module, torch.optim.Adam(network.parameters(), lr=1e-2)


def classifier(spatial_dims):
    network = classification_adapter(denoiser(spatial_dims), 1, timesteps=(20, 200), width=16)
    return DiffusionClassificationAdapter(network), torch.optim.Adam(network.parameters(), lr=1e-2)


def steps(module, optimizer, batch, n):
    module.train()
    losses = []
    for _ in range(n):
        optimizer.zero_grad()
        loss = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["segment", "classify"])
def test_the_denoiser_stays_frozen_and_only_the_head_moves(spatial_dims, kind):
    module, optimizer = segmenter(spatial_dims) if kind == "segment" else classifier(spatial_dims)
    batch = square_case(spatial_dims)
    if kind == "classify":
        batch["label"] = torch.tensor([0, 1])
    denoiser_before = {k: v.clone() for k, v in module.network.features.network.state_dict().items()}
    head_before = {k: v.clone() for k, v in module.network.head.state_dict().items()}
    steps(module, optimizer, batch, 1)
    assert not module.network.features.network.training  # module.train() left it in eval mode
    for key, value in module.network.features.network.state_dict().items():
        assert torch.equal(value, denoiser_before[key]), key
    assert any(not torch.equal(v, head_before[k]) for k, v in module.network.head.state_dict().items())


@pytest.mark.parametrize("pixels", [None, 64], ids=["all-pixels", "sampled"])
def test_segmentation_loss_falls_on_a_tiny_overfit_case(spatial_dims, pixels):
    module, optimizer = segmenter(spatial_dims, pixels_per_image=pixels)
    batch = square_case(spatial_dims)
    losses = steps(module, optimizer, batch, 30)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])
    module.eval()
    volume = square_case(spatial_dims, n=1)
    labels = module.infer(volume["image"] if spatial_dims == 3 else volume["image"][:, :, None])
    truth = volume["label"] if spatial_dims == 3 else volume["label"][:, :, None]
    assert labels.shape == truth.shape
    assert dice_per_case(labels, truth, 2)[0] > 0.8


def test_classification_loss_falls_on_a_tiny_overfit_case(spatial_dims):
    module, optimizer = classifier(spatial_dims)
    batch = square_case(spatial_dims)
    batch["image"][1] = -batch["image"][1]  # the second image is the negative of the first
    batch["label"] = torch.tensor([0, 1])
    losses = steps(module, optimizer, batch, 30)
    assert sum(losses[-3:]) < 0.5 * sum(losses[:3])


def test_dice_per_case_by_hand():
    truth = torch.tensor([0, 1, 1, 2, 2, 2, 0, 0])
    pred = torch.tensor([0, 1, 0, 2, 2, 1, 0, 2])
    dice = dice_per_case(pred, truth, 4)
    # class 1: 1 overlap, 2 + 2 voxels -> 0.5; class 2: 2 overlaps, 3 + 3 -> 2/3; class 3 absent from the truth.
    torch.testing.assert_close(dice[:2], torch.tensor([0.5, 2 / 3]))
    assert math.isnan(float(dice[2]))


def test_2d_segmentation_of_a_scan_is_its_slices_stacked():
    module, _ = segmenter(2)
    module.eval()
    volume = torch.rand(1, 1, 3, 16, 16) * 2 - 1
    labels = module.infer(volume)
    assert labels.shape == volume.shape
    for z in range(3):
        expected = module.network(volume[:, :, z]).argmax(dim=1)
        assert torch.equal(labels[0, :, z], expected)


def test_a_2d_case_scores_the_mean_of_its_slices_and_auroc_is_over_cases():
    module, _ = classifier(2)
    module.eval()
    # A stub head whose logit is the slice's mean value, so each slice's probability is set by hand.
    module.network.forward = lambda images: torch.logit(images.flatten(1).mean(1, keepdim=True))
    cases = {"a": ([0.9, 0.25], 1), "b": ([0.6, 0.6], 0), "c": ([0.8, 0.8], 1), "d": ([0.2, 0.4], 0)}
    for name, (slices, label) in cases.items():
        volume = torch.tensor(slices)[None, None, :, None, None].expand(1, 1, 2, 4, 4)
        module._evaluate({"image": volume, "label": torch.tensor([label]), "case_id": [name]}, "val")
    probabilities = [row["probability"] for row in module.case_rows]
    torch.testing.assert_close(torch.tensor(probabilities), torch.tensor([0.575, 0.6, 0.8, 0.3]))
    # Per case: positives {0.575, 0.8} against negatives {0.6, 0.3} win 3 of 4 pairs (per slice it would be 13/16).
    assert float(module.val_metrics["AUROC"].compute()) == pytest.approx(0.75)


def test_the_adapters_need_a_pretrained_denoiser():
    with pytest.raises(CTFMError, match="no pretrained denoiser given: set vars::checkpoint="):
        pretrained_denoiser(None, 2)
