"""Several trained networks as one: the mean of their probabilities, then threshold (and largest component).

The cross-validation's fold models make one such ensemble. Each member keeps its own
preprocessing (recorded in its checkpoint); their probabilities meet on the input's own grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unet.errors import InputError
from unet.metrics import postprocess
from unet.predict.segmenter import Segmenter


@dataclass
class EnsembleSegmenter:
    """Raw slices (S, H, W, 3) uint8 in, like ``Segmenter``; the members' mean probability inside."""

    members: Sequence[Segmenter]
    threshold: float = 0.5
    largest_component: bool = True  # decided on the out-of-fold predictions (the cv stage's ensemble.json)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[Path], *, device: str | torch.device = "cpu", tta: bool = False,
                         threshold: float | None = None, largest_component: bool | None = None) -> EnsembleSegmenter:
        """``largest_component``: the ensemble's rule; None takes the members' (most of them)."""
        if not paths:
            raise InputError("an ensemble needs at least one checkpoint")
        members = [Segmenter.from_checkpoint(Path(p), device=device, tta=tta) for p in paths]
        if largest_component is None:
            largest_component = 2 * sum(m.largest_component for m in members) >= len(members)
        return cls(members, members[0].threshold if threshold is None else threshold, largest_component)

    # what a report says of the model: the first member's (the members share recipe and input size)
    @property
    def model(self) -> torch.nn.Module:
        return self.members[0].model

    @property
    def image_size(self) -> int:
        return self.members[0].image_size

    @property
    def device(self) -> torch.device:
        return self.members[0].device

    @property
    def tta(self) -> bool:
        return self.members[0].tta

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Mean tumour probability (S, H, W) of the members, on the input's grid."""
        return np.mean([member.probabilities(images) for member in self.members], axis=0)

    def mask(self, probabilities: np.ndarray, *, largest_component: bool | None = None) -> np.ndarray:
        keep = self.largest_component if largest_component is None else largest_component
        return postprocess(probabilities, threshold=self.threshold, largest_component=keep)

    def segment(self, images: np.ndarray, *, largest_component: bool | None = None) -> np.ndarray:
        return self.mask(self.probabilities(images), largest_component=largest_component)
