import math

import pytest
import torch

from minisolo import dice_loss, sigmoid_focal_loss
from minisolo.losses import solo_category_loss, solo_mask_loss


def test_focal_loss_by_hand():
    logits = torch.tensor([0.0, 2.0, -1.0])
    targets = torch.tensor([1.0, 0.0, 1.0])
    loss = sigmoid_focal_loss(logits, targets, gamma=2.0, alpha=0.25)
    p = [0.5, 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(1))]
    expected = [
        -0.25 * (1 - p[0]) ** 2 * math.log(p[0]),  # positive
        -0.75 * p[1] ** 2 * math.log(1 - p[1]),  # negative
        -0.25 * (1 - p[2]) ** 2 * math.log(p[2]),
    ]
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_focal_loss_gamma_zero_alpha_half_is_half_bce():
    logits = torch.randn(5, 4)
    targets = (torch.rand(5, 4) > 0.5).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, gamma=0.0, alpha=0.5), 0.5 * bce)


def test_focal_loss_down_weights_easy_examples():
    easy = sigmoid_focal_loss(torch.tensor([-6.0]), torch.tensor([0.0]))
    hard = sigmoid_focal_loss(torch.tensor([2.0]), torch.tensor([0.0]))
    assert easy.item() < 1e-6 < hard.item()


def test_dice_loss_by_hand():
    probs = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]])
    target = torch.tensor([[[1, 1], [0, 0]]])
    a = 0.5 + 1.0
    b = 0.25 + 1.0 + 0.0 + 0.0625 + 0.001
    c = 2.0 + 0.001
    torch.testing.assert_close(dice_loss(probs, target), torch.tensor([1 - 2 * a / (b + c)]))


def test_dice_loss_perfect_and_disjoint():
    target = torch.zeros(2, 4, 4)
    target[:, :2] = 1
    perfect = dice_loss(target.clone(), target)
    disjoint = dice_loss(1 - target, target)
    assert perfect.shape == (2,)
    assert torch.all(perfect < 1e-3)
    torch.testing.assert_close(disjoint, torch.ones(2))


def test_loss_input_checks():
    with pytest.raises(ValueError, match="same shape"):
        dice_loss(torch.zeros(2, 3, 3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="one-hot"):
        sigmoid_focal_loss(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="floating point"):
        dice_loss(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2))


def test_category_loss_normalised_by_positives_plus_one():
    torch.manual_seed(0)
    logits = [torch.randn(2, 3, 4, 4), torch.randn(2, 3, 2, 2)]
    labels = [torch.full((2, 4, 4), 3), torch.full((2, 2, 2), 3)]
    labels[0][0, 1, 2] = 1
    labels[1][1, 0, 0] = 0
    loss = solo_category_loss(logits, labels, num_classes=3, num_positives=2)
    total = 0.0
    for x, t in zip(logits, labels, strict=True):
        flat = x.permute(0, 2, 3, 1).reshape(-1, 3)
        one_hot = torch.zeros_like(flat)
        for row, label in enumerate(t.reshape(-1).tolist()):
            if label < 3:
                one_hot[row, label] = 1
        total = total + sigmoid_focal_loss(flat, one_hot).sum()
    torch.testing.assert_close(loss, total / 3)


def test_mask_loss_mean_over_all_positives_and_empty_case():
    probs = [torch.full((2, 4, 4), 0.5), torch.full((1, 2, 2), 0.9)]
    targets = [torch.ones(2, 4, 4, dtype=torch.bool), torch.zeros(1, 2, 2, dtype=torch.bool)]
    expected = torch.cat([dice_loss(p, t) for p, t in zip(probs, targets, strict=True)]).mean()
    torch.testing.assert_close(solo_mask_loss(probs, targets), expected)
    empty = torch.zeros(0, 4, 4, requires_grad=True)
    zero = solo_mask_loss([empty], [torch.zeros(0, 4, 4, dtype=torch.bool)])
    assert zero.item() == 0.0 and zero.requires_grad
