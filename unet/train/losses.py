"""Segmentation losses on U-Net logits: the reference's soft Dice, the paper's weighted cross-entropy.

Shapes: ``logits`` (B, 1, H, W) for a binary net (sigmoid) or (B, 2, H, W) for the paper's
two-class net (softmax; class 1 is the tumour). ``target`` and ``weight_map`` are (B, H, W) or
(B, 1, H, W) with the logits' H and W; the target holds 0/1. The paper net's output is smaller
than its input: centre-crop the target and weight map to the logits first
(``unet.models.blocks.center_crop``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unet.models.probability import foreground_probability


def _as_maps(logits: torch.Tensor, target: torch.Tensor, name: str = "target") -> torch.Tensor:
    """``target`` as (B, H, W) float, checked against (B, C, H, W) logits with C in {1, 2}."""
    if logits.ndim != 4 or logits.shape[1] not in (1, 2):
        raise ValueError(f"logits must be (B, 1, H, W) or (B, 2, H, W), got {tuple(logits.shape)}")
    given = tuple(target.shape)
    if target.ndim == 4 and target.shape[1] == 1:
        target = target[:, 0]
    b, _, h, w = logits.shape
    if tuple(target.shape) != (b, h, w):
        raise ValueError(
            f"{name} of shape {given} does not match logits {tuple(logits.shape)}: "
            f"give ({b}, {h}, {w}) or ({b}, 1, {h}, {w}); centre-crop it for the paper U-Net "
            "(unet.models.blocks.center_crop)"
        )
    return target.to(logits.dtype)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0, *,
                   from_logits: bool = True) -> torch.Tensor:
    """1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth), sums over the whole batch at once.

    As the reference computes it: one Dice over every pixel of the batch flattened together (not
    a mean of per-image Dice). Takes LOGITS: p is their sigmoid (softmax class 1 for two
    channels); pass ``from_logits=False`` to give probabilities p (B, 1, H, W) directly.
    """
    t = _as_maps(logits, target)
    p = foreground_probability(logits) if from_logits else logits[:, -1]
    intersection = (p * t).sum()
    return 1.0 - (2.0 * intersection + smooth) / (p.sum() + t.sum() + smooth)


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor) -> torch.Tensor:
    """The paper's loss: sum over pixels of w(x) * CE(x), divided by the NUMBER OF PIXELS (B*H*W).

    One-channel logits: binary cross-entropy on the sigmoid; two channels: softmax cross-entropy
    with class index = target. Dividing by the pixel count (not by sum(w)) keeps the weights'
    scale: a map of all 2s gives twice the unweighted mean cross-entropy.
    """
    t = _as_maps(logits, target)
    w = _as_maps(logits, weight_map, "weight_map")
    if logits.shape[1] == 1:
        per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none")
    else:
        per_pixel = F.cross_entropy(logits, t.long(), reduction="none")
    return (w * per_pixel).sum() / per_pixel.numel()


class CombinedLoss(nn.Module):
    """dice_weight * soft Dice + ce_weight * weighted cross-entropy (uniform weights without a map)."""

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 0.0, smooth: float = 1.0) -> None:
        super().__init__()
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError(
                f"loss weights dice={dice_weight}, ce={ce_weight}: both must be >= 0 and one > 0, "
                "e.g. dice_weight=1, ce_weight=0 (the reference) or 0 and 1 (the paper)"
            )
        self.dice_weight, self.ce_weight, self.smooth = dice_weight, ce_weight, smooth

    def parts(self, logits: torch.Tensor, target: torch.Tensor,
              weight_map: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Each weighted term by name (``dice``, ``ce``), for logging; only the terms in use."""
        terms: dict[str, torch.Tensor] = {}
        if self.dice_weight:
            terms["dice"] = self.dice_weight * soft_dice_loss(logits, target, self.smooth)
        if self.ce_weight:
            if weight_map is None:
                weight_map = torch.ones_like(_as_maps(logits, target))
            terms["ce"] = self.ce_weight * weighted_cross_entropy(logits, target, weight_map)
        return terms

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                weight_map: torch.Tensor | None = None) -> torch.Tensor:
        return sum(self.parts(logits, target, weight_map).values())
