"""Losses of label maps: CE + focal on class indices by hand, and DiceCE over every deep-supervision level."""

import torch
import torch.nn.functional as F

from ctfm.losses import CrossEntropyFocalLoss, deep_supervision_dice_ce


def test_cross_entropy_focal_is_the_sum_of_its_terms_by_hand():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=generator)
    targets = torch.randint(0, 3, (2, 5, 5), generator=generator)
    log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None])
    # monai's FocalLoss averages over every class channel of the one-hot target: the other 2 of 3 channels add 0.
    focal = (-((1 - log_p.exp()) ** 2) * log_p).mean() / 3
    expected = F.cross_entropy(logits, targets) + 0.5 * focal
    loss = CrossEntropyFocalLoss(focal_weight=0.5, gamma=2.0)(logits, targets)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


def test_deep_supervision_weighs_every_level_and_a_perfect_prediction_costs_little():
    labels = torch.zeros(1, 1, 8, 8, 8)  # label maps come in as floats, as MONAI loads them
    labels[..., 2:6, 2:6, 2:6] = 1
    perfect = torch.cat([(labels == 0).float(), (labels == 1).float()], dim=1) * 20 - 10
    wrong = -perfect
    loss = deep_supervision_dice_ce()
    coarse = F.interpolate(perfect, scale_factor=0.5)
    assert float(loss([perfect, coarse], labels)) < 0.05
    assert float(loss([wrong, F.interpolate(wrong, scale_factor=0.5)], labels)) > 1.0
    assert float(loss([perfect, -coarse], labels)) > float(loss([perfect, coarse], labels))
