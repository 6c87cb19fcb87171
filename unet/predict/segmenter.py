"""Inference on raw volumes: the training preprocessing, the network, and the way back.

``Segmenter`` takes a patient's raw slices ((S, H, W, 3) uint8, as read from the Kaggle TIFFs),
preprocesses the volume exactly as the checkpoint's training data was (``metadata["preprocess"]``
in the checkpoint), predicts every slice (optionally averaged with its horizontal flip), maps the
probabilities back to the input's (S, H, W) grid, then thresholds and keeps the largest 3-D
component (the reference protocol). Evaluation, the prediction command and the MLflow model all
go through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet.models.checkpoint import load_checkpoint, model_from_checkpoint
from unet.config import PrepareConfig
from unet.metrics import postprocess
from unet.preprocess import Geometry, preprocess_volume, to_original
from unet.train.loop import predict_probabilities


def preprocess_metadata(config: PrepareConfig) -> dict[str, Any]:
    """What inference needs to preprocess new volumes the way the training data was."""
    return {"image_size": config.image_size, "crop_threshold": config.crop_threshold,
            "clip_percentiles": list(config.clip_percentiles)}


@torch.no_grad()
def predict_prepared(model: nn.Module, images: np.ndarray, device: torch.device, *, tta: bool = False,
                     batch_size: int = 32) -> np.ndarray:
    """Foreground probabilities (S, size, size) for preprocessed (S, 3, size, size) slices.

    ``tta`` averages with the prediction of the horizontally flipped slices (flipped back).
    """
    probs = predict_probabilities(model, images, device, batch_size=batch_size)
    if tta:
        flipped = np.ascontiguousarray(np.asarray(images)[..., ::-1])
        probs = (probs + predict_probabilities(model, flipped, device, batch_size=batch_size)[..., ::-1]) / 2
    return probs


@dataclass
class Segmenter:
    """A trained network with the preprocessing and post-processing it was trained with."""

    model: nn.Module
    image_size: int
    crop_threshold: float = 0.1
    clip_percentiles: tuple[float, float] = (10.0, 99.0)
    threshold: float = 0.5
    tta: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 32

    @classmethod
    def from_checkpoint(cls, path: Path, *, device: str | torch.device = "cpu", tta: bool = False,
                        threshold: float | None = None) -> Segmenter:
        device = torch.device(device)
        state = load_checkpoint(path, map_location=device)
        meta = state.get("metadata", {})
        if "preprocess" not in meta:
            raise ValueError(f"{path}: the checkpoint does not say how its inputs were preprocessed; "
                             "retrain it with this version (dvc repro train)")
        pre = meta["preprocess"]
        return cls(model_from_checkpoint(state).to(device), pre["image_size"], pre["crop_threshold"],
                   tuple(pre["clip_percentiles"]), meta.get("threshold", 0.5) if threshold is None else threshold,
                   tta, device)

    def prepare(self, images: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(S, H, W, 3) uint8 -> (S, 3, size, size) float32 network input and its geometry."""
        check_slices(images)
        volume, _, geometry = preprocess_volume(images, None, size=self.image_size,
                                                crop_threshold=self.crop_threshold,
                                                clip_percentiles=self.clip_percentiles)
        return np.ascontiguousarray(volume.transpose(0, 3, 1, 2)), geometry

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Tumour probability (S, H, W) float32 on the input's own grid."""
        prepared, geometry = self.prepare(images)
        probs = predict_prepared(self.model, prepared, self.device, tta=self.tta, batch_size=self.batch_size)
        return np.clip(to_original(probs, geometry, order=1), 0.0, 1.0)

    def segment(self, images: np.ndarray, *, largest_component: bool = True) -> np.ndarray:
        """Binary mask (S, H, W) uint8 0/1: threshold, then the largest 3-D component."""
        return postprocess(self.probabilities(images), threshold=self.threshold,
                           largest_component=largest_component)


def check_slices(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", type(images).__name__)
        raise ValueError(
            f"expected one patient's slices as a (slices, height, width, 3) array, got {shape}; "
            "channels are pre-contrast, FLAIR, post-contrast (repeat FLAIR for a missing sequence)"
        )
    if images.shape[0] == 0:
        raise ValueError("no slices: a volume needs at least one (S, H, W, 3) slice")
