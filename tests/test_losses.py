"""Losses on hand-built tensors whose values were worked out on paper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unet.train.losses import CombinedLoss, soft_dice_loss, weighted_cross_entropy

LN2, LN3 = math.log(2), math.log(3)


def maps(*rows: list[list[float]]) -> torch.Tensor:
    """(B, 1, H, W) from B images written row by row."""
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(1)


# ---- soft Dice ----------------------------------------------------------------------------------

# (probabilities, target, expected) with smooth = 1: 1 - (2 sum(pt) + 1) / (sum(p) + sum(t) + 1)
DICE_ON_PROBABILITIES = [
    pytest.param(maps([[1, 0], [0, 1]]), maps([[1, 0], [0, 1]]), 0.0, id="perfect"),
    pytest.param(maps([[0, 1], [1, 1]]), maps([[1, 0], [0, 0]]), 1 - 1 / 5, id="all-wrong"),
    pytest.param(maps([[0.5, 0.5], [0.5, 0.5]]), maps([[1, 1], [0, 0]]), 1 - 3 / 5, id="half"),
    pytest.param(maps([[0, 0], [0, 0]]), maps([[0, 0], [0, 0]]), 0.0, id="empty-both"),
    # whole batch flattened: 1 - (2*2 + 1) / (3 + 2 + 1); the mean of per-image losses would be 0.25
    pytest.param(maps([[1, 1], [0, 0]], [[1, 0], [0, 0]]), maps([[1, 1], [0, 0]], [[0, 0], [0, 0]]), 1 / 6,
                 id="batch-flattened"),
]


@pytest.mark.parametrize(("probs", "target", "expected"), DICE_ON_PROBABILITIES)
def test_soft_dice_on_probabilities(probs: torch.Tensor, target: torch.Tensor, expected: float) -> None:
    assert soft_dice_loss(probs, target, from_logits=False).item() == pytest.approx(expected, abs=1e-7)


def test_soft_dice_takes_logits_by_default() -> None:
    target = maps([[1, 0], [0, 1]])
    assert soft_dice_loss(40 * (target - 0.5), target).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(torch.zeros(1, 1, 2, 2), maps([[1, 1], [0, 0]])).item() == pytest.approx(0.4)
    # smooth = 0 on an all-wrong sure prediction is exactly 1
    assert soft_dice_loss(-40 * (target - 0.5), target, smooth=0.0).item() == pytest.approx(1.0, abs=1e-6)


def test_soft_dice_two_channels_uses_class_one() -> None:
    z = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 4, 4) > 0.5).float()  # (B, H, W) is accepted too
    two = torch.cat([torch.zeros_like(z), z], dim=1)  # softmax([0, z])[1] == sigmoid(z)
    assert soft_dice_loss(two, target).item() == pytest.approx(soft_dice_loss(z, target).item(), abs=1e-6)


# ---- weighted cross-entropy ---------------------------------------------------------------------

# One 2x2 image: logit ln 3 means p(tumour) = 3/4, logit 0 means 1/2.
#   pixel   p     t  w   w * CE
#   (0,0)  3/4    1  2   2 ln(4/3)
#   (0,1)  3/4    0  1   ln 4
#   (1,0)  1/2    0  1   ln 2
#   (1,1)  1/2    1  4   4 ln 2
# sum = 2 ln 4 - 2 ln 3 + 2 ln 2 + 5 ln 2 = 11 ln 2 - 2 ln 3, over 4 pixels.
LOGIT = maps([[LN3, LN3], [0, 0]])
TARGET = maps([[1, 0], [0, 1]])
WEIGHTS = maps([[2, 1], [1, 4]])
EXPECTED = (11 * LN2 - 2 * LN3) / 4


@pytest.mark.parametrize(
    "logits",
    [pytest.param(LOGIT, id="one-channel-bce"),
     pytest.param(torch.cat([torch.zeros_like(LOGIT), LOGIT], dim=1), id="two-channel-softmax")],
)
def test_weighted_cross_entropy_by_hand(logits: torch.Tensor) -> None:
    assert weighted_cross_entropy(logits, TARGET, WEIGHTS).item() == pytest.approx(EXPECTED, rel=1e-6)


def test_weighted_cross_entropy_is_normalised_by_pixel_count() -> None:
    logits, target = torch.randn(2, 1, 6, 6), (torch.rand(2, 1, 6, 6) > 0.5).float()
    plain = F.binary_cross_entropy_with_logits(logits, target).item()
    assert weighted_cross_entropy(logits, target, torch.ones_like(target)).item() == pytest.approx(plain, rel=1e-6)
    assert weighted_cross_entropy(logits, target, 2 * torch.ones_like(target)).item() == pytest.approx(2 * plain, rel=1e-6)


@pytest.mark.parametrize(
    ("logits_shape", "target_shape", "weight_shape", "match"),
    [
        ((1, 2, 4, 4), (1, 1, 8, 8), (1, 1, 4, 4), r"target of shape \(1, 1, 8, 8\).*center_crop"),
        ((1, 1, 4, 4), (1, 4, 4), (1, 1, 5, 4), r"weight_map of shape \(1, 1, 5, 4\)"),
        ((1, 3, 4, 4), (1, 4, 4), (1, 4, 4), r"\(B, 1, H, W\) or \(B, 2, H, W\)"),
    ],
)
def test_mismatched_shapes_raise(logits_shape: tuple, target_shape: tuple, weight_shape: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        weighted_cross_entropy(torch.zeros(logits_shape), torch.zeros(target_shape), torch.ones(weight_shape))


# ---- combined ------------------------------------------------------------------------------------

DICE = 1 - (2 * (3 / 4 + 1 / 2) + 1) / ((3 / 4 + 3 / 4 + 1 / 2 + 1 / 2) + 2 + 1)  # soft Dice of LOGIT
UNIFORM_CE = (math.log(4 / 3) + 2 * LN2 + LN2 + LN2) / 4  # the table above with w = 1


@pytest.mark.parametrize(
    ("dice_weight", "ce_weight", "weight_map", "expected", "parts"),
    [
        (1.0, 0.0, None, DICE, {"dice"}),
        (0.0, 1.0, None, UNIFORM_CE, {"ce"}),
        (0.0, 1.0, WEIGHTS, EXPECTED, {"ce"}),
        (1.0, 0.5, WEIGHTS, DICE + 0.5 * EXPECTED, {"dice", "ce"}),
    ],
)
def test_combined_loss(dice_weight: float, ce_weight: float, weight_map, expected: float, parts: set) -> None:
    loss = CombinedLoss(dice_weight=dice_weight, ce_weight=ce_weight)
    assert loss(LOGIT, TARGET, weight_map).item() == pytest.approx(expected, rel=1e-6)
    assert set(loss.parts(LOGIT, TARGET, weight_map)) == parts


def test_combined_loss_back_propagates() -> None:
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    CombinedLoss(1.0, 1.0)(logits, torch.zeros(2, 8, 8), torch.ones(2, 8, 8)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(("dice_weight", "ce_weight"), [(0.0, 0.0), (-1.0, 1.0), (1.0, -0.5)])
def test_combined_loss_bad_weights_raise(dice_weight: float, ce_weight: float) -> None:
    with pytest.raises(ValueError, match="both must be >= 0 and one > 0"):
        CombinedLoss(dice_weight, ce_weight)
