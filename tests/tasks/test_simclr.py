"""The intra-sample SimCLR training step under CPU mixed precision (the cause of NaN weights from short runs)."""

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
