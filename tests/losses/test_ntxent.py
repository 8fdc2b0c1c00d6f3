import pytest
import torch
from reference_ntxent import reference_intra_sample_ntxent

from ctfm.losses import IntraSampleNTXentLoss


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_matches_direct_formula(symmetric, temperature):
    z = torch.randn(3, 5, 2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loss = IntraSampleNTXentLoss(temperature=temperature, symmetric=symmetric)(z)
    expected = reference_intra_sample_ntxent(z, temperature=temperature, symmetric=symmetric)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-5)


def test_negatives_come_only_from_the_same_scan():
    """Changing one scan's projections must leave the other scans' loss terms untouched."""
    loss_fn = IntraSampleNTXentLoss()
    z = torch.randn(2, 4, 2, 8, generator=torch.Generator().manual_seed(1))
    per_scan = [loss_fn(z[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(loss_fn(z), (per_scan[0] + per_scan[1]) / 2)
    z_changed = z.clone()
    z_changed[1] = torch.randn(4, 2, 8)
    torch.testing.assert_close(loss_fn(z_changed[:1]), per_scan[0])


def test_aligned_views_give_lower_loss_than_random_views():
    loss_fn = IntraSampleNTXentLoss()
    patches = torch.nn.functional.normalize(torch.randn(2, 6, 1, 32), dim=-1)
    aligned = patches.repeat(1, 1, 2, 1)
    shuffled = torch.cat([patches, torch.randn(2, 6, 1, 32)], dim=2)
    assert loss_fn(aligned) < 0.1 < loss_fn(shuffled)


def test_gradients_reach_every_view():
    z = torch.randn(2, 3, 2, 8, requires_grad=True)
    IntraSampleNTXentLoss()(z).backward()
    assert torch.all(z.grad.flatten(0, 2).norm(dim=-1) > 0)


@pytest.mark.parametrize("shape", [(4, 2, 8), (2, 3, 3, 8), (2, 1, 2, 8)])
def test_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="patches|shape"):
        IntraSampleNTXentLoss()(torch.randn(*shape))


def test_the_loss_is_computed_in_float32_under_autocast():
    torch.manual_seed(0)
    z = torch.randn(2, 6, 2, 32)
    loss = IntraSampleNTXentLoss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(z.bfloat16())
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, loss(z.bfloat16().float()))
