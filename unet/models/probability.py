"""The one rule that turns U-Net logits into probabilities (training, validation, prediction).

One output channel (the reference net): sigmoid. Several (the paper's two-class net): softmax
over the channels, and the tumour is the last class.
"""

from __future__ import annotations

import torch


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) logits -> (B, C, H, W) probabilities: sigmoid for C = 1, softmax over C otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """P(tumour) as (B, H, W): the last channel of ``probabilities``."""
    return probabilities(logits)[:, -1]
