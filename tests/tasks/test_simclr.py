"""The intra-sample SimCLR training step under CPU mixed precision (the cause of NaN weights from short runs)."""

import pytest
import torch
from torch import nn

from ctfm.losses import IntraSampleNTXentLoss
from ctfm.tasks import IntraSampleSimCLR


class _TwoConvs(nn.Module):
    """Views -> 16 features through two 3x3x3 convolutions: the encoder's blocks, minus everything else."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 16, 3, padding=1)
        self.conv = nn.Conv3d(16, 16, 3, padding=1)

    def forward(self, x):
        return self.conv(torch.relu(self.stem(x))).flatten(2).mean(2)


def _gradients(module, views, autocast):
    module.network.zero_grad()
    # Leave NaN in freed memory, where uninitialised reads of a faulty kernel find it.
    poison = [torch.full((n,), float("nan")) for n in (1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20)]
    del poison
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        module._batch_size = 1
        with module.training_precision():
            loss = module.compute_loss({"views": views})
    loss.backward()
    return {name: p.grad.clone() for name, p in module.network.named_parameters()}


def test_bf16_mixed_precision_on_a_cpu_trains_in_float32():
    """oneDNN's bf16 Conv3d weight gradient reads uninitialised memory when the input is 2 voxels deep.

    The stride-16 encoder has such a level for 16-, 24- and 32-slice patches; under CPU autocast its weight
    gradients came out as garbage or NaN, and one optimiser step later most of the encoder's weights were NaN.
    """
    torch.manual_seed(0)
    module = IntraSampleSimCLR(_TwoConvs(), IntraSampleNTXentLoss())
    views = torch.rand(1, 2, 2, 1, 2, 8, 8)  # one scan, two patches of 2 x 8 x 8 voxels
    reference = _gradients(module, views, autocast=False)
    for _ in range(3):
        for name, grad in _gradients(module, views, autocast=True).items():
            assert torch.isfinite(grad).all(), name
            torch.testing.assert_close(grad, reference[name], msg=name)


def _train(make_batch, steps=24, seed=0):
    """Losses of a tiny CT-FM encoder trained by intra-sample SimCLR on the batches ``make_batch(step)`` gives."""
    from ctfm.nn import ContrastiveNetwork, ProjectionHead, ct_fm_encoder

    torch.manual_seed(seed)
    network = ContrastiveNetwork(ct_fm_encoder(init_filters=4), ProjectionHead(64, 32, 16))
    module = IntraSampleSimCLR(network, IntraSampleNTXentLoss(temperature=0.1))
    optimizer = torch.optim.AdamW(network.parameters(), lr=2e-3)
    losses = []
    for step in range(steps):
        batch = module.on_after_batch_transfer(make_batch(step), 0)
        loss = module.compute_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return losses


@pytest.mark.slow
def test_device_views_train_as_worker_views_do():
    """The loss falls as far with views made from raw patches on the device as with the workers' views."""
    import numpy as np
    from monai.data import MetaTensor

    from ctfm.data.sample import generate_ct
    from ctfm.transforms.preprocess import CTPreprocessing
    from ctfm.transforms.quantise import quantise
    from ctfm.transforms.views import ContrastivePatches, ContrastiveViews

    patch = (16, 32, 32)
    scans = []
    for seed in range(2):
        sample = generate_ct((32, 64, 64), (3.0, 1.0, 1.0), seed=seed)
        image = MetaTensor(torch.from_numpy(sample.hu.astype(np.float32))[None], affine=torch.as_tensor(sample.affine))
        scans.append(quantise(CTPreprocessing(min_size=patch)(image).numpy()))
    workers = ContrastiveViews(patch, patches_per_scan=4).set_random_state(0)
    readers = ContrastivePatches(patch, patches_per_scan=4).set_random_state(0)
    worker_losses = _train(lambda step: {"views": torch.stack([workers(scan) for scan in scans])})
    device_losses = _train(lambda step: {"patches": torch.stack([readers(scan) for scan in scans])})

    def fall(losses):
        return np.mean(losses[:4]) - np.mean(losses[-4:])

    assert fall(worker_losses) > 0.1 and fall(device_losses) > 0.1
    assert abs(np.mean(device_losses[-4:]) - np.mean(worker_losses[-4:])) < 0.5 * fall(worker_losses)
