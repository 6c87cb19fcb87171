"""Inference on raw volumes: the training preprocessing, the network, and the way back.

``Segmenter`` takes a patient's raw slices ((S, H, W, 3) uint8, as read from the Kaggle TIFFs),
preprocesses the volume exactly as the checkpoint's training data was (``metadata["preprocess"]``
in the checkpoint), predicts every slice (optionally averaged with its horizontal flip), maps the
probabilities back to the input's (S, H, W) grid, then thresholds and keeps the largest 3-D
component (the reference protocol) where the checkpoint says its validation volumes scored better
with it (``postprocess_rule``). The evaluate stage, ``lgg-predict`` and the MLflow model all
go through it, so the number evaluated is the model shipped. Nothing here imports training code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unet.errors import InputError
from unet.metrics import postprocess
from unet.models.checkpoint import load_checkpoint, model_from_checkpoint
from unet.models.forward import DEVICE_BATCH, predict_probabilities
from unet.preprocess import Geometry, preprocess_volume, to_original

# Small batches in channels_last run the reference net 1.8x faster on a 2-core CPU than batches
# of 32 in NCHW (bf16 autocast either way; benchmarks/bench_predict.py): the activations stay in cache.
CPU_BATCH = 2


def predict_prepared(model: nn.Module, images: np.ndarray, device: torch.device, *, tta: bool = False,
                     batch_size: int = DEVICE_BATCH) -> np.ndarray:
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
    statistics: str = "reference"  # which slices the volume statistics come from (unet.preprocess)
    threshold: float = 0.5
    tta: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = DEVICE_BATCH
    # keep only the largest 3-D component: the reference's protocol; a checkpoint records whether its
    # validation volumes scored better with it (``postprocess_rule``)
    largest_component: bool = True

    @classmethod
    def from_checkpoint(cls, path: Path, *, device: str | torch.device = "cpu", tta: bool = False,
                        threshold: float | None = None) -> Segmenter:
        """The checkpoint's network in channels_last on ``device``; every way a file can fail to be an
        lgg-unet checkpoint is an InputError naming it."""
        device = torch.device(device)
        state = load_checkpoint(path, map_location=device)
        meta = state.get("metadata", {})
        if "preprocess" not in meta:
            raise InputError(f"{path}: the checkpoint does not say how its inputs were preprocessed; "
                             "retrain it with this version (dvc repro train)")
        try:
            model = model_from_checkpoint(state).to(device)
            pre = meta["preprocess"]
            segmenter = cls(model, pre["image_size"], pre["crop_threshold"], tuple(pre["clip_percentiles"]),
                            # checkpoints from before the reference statistics took them over every slice
                            pre.get("statistics", "all"),
                            meta.get("threshold", 0.5) if threshold is None else threshold, tta, device,
                            largest_component=postprocess_rule(meta))
        except (RuntimeError, KeyError, TypeError) as exc:  # weights that do not fit the config, odd metadata
            raise InputError(f"{path}: the checkpoint does not rebuild an lgg-unet model "
                             f"({type(exc).__name__}: {exc})") from None
        segmenter.model.to(memory_format=torch.channels_last)  # convolutions then keep NHWC activations
        if device.type == "cpu":
            segmenter.batch_size = CPU_BATCH
        return segmenter

    def prepare(self, images: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """(S, H, W, 3) uint8 -> (S, 3, size, size) float32 network input and its geometry."""
        check_slices(images)
        volume, _, geometry = preprocess_volume(images, None, size=self.image_size,
                                                crop_threshold=self.crop_threshold,
                                                clip_percentiles=self.clip_percentiles,
                                                statistics=self.statistics)
        return np.ascontiguousarray(volume.transpose(0, 3, 1, 2)), geometry

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Tumour probability (S, H, W) float32 on the input's own grid."""
        prepared, geometry = self.prepare(images)
        probs = predict_prepared(self.model, prepared, self.device, tta=self.tta, batch_size=self.batch_size)
        return np.clip(to_original(probs, geometry, order=1), 0.0, 1.0)

    def mask(self, probabilities: np.ndarray, *, largest_component: bool | None = None) -> np.ndarray:
        """Binary mask (S, H, W) uint8 0/1 from ``probabilities``: threshold, then the largest 3-D
        component where the model's rule says so (``largest_component`` overrides it)."""
        keep = self.largest_component if largest_component is None else largest_component
        return postprocess(probabilities, threshold=self.threshold, largest_component=keep)

    def segment(self, images: np.ndarray, *, largest_component: bool | None = None) -> np.ndarray:
        """Raw slices in, binary mask (S, H, W) uint8 0/1 out."""
        return self.mask(self.probabilities(images), largest_component=largest_component)


def postprocess_rule(metadata: dict[str, Any]) -> bool:
    """Whether a checkpoint's masks keep only the largest 3-D component: what its training decided
    on the validation volumes (``metadata["postprocess"]``); checkpoints from before: yes."""
    return bool(metadata.get("postprocess", {}).get("largest_component", True))


def check_slices(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", type(images).__name__)
        raise InputError(
            f"expected one patient's slices as a (slices, height, width, 3) array, got {shape}; "
            "channels are pre-contrast, FLAIR, post-contrast (repeat FLAIR for a missing sequence)"
        )
    if images.shape[0] == 0:
        raise InputError("no slices: a volume needs at least one (S, H, W, 3) slice")


RAW_SLICES = "one patient's raw slices (N, H, W, 3) with whole values 0..255 as read from the TIFFs"
RAW_MAX_AT_LEAST = 16  # a raw volume's brightest voxel; z-scores hardly reach it (the Kaggle set's reach 255)


def as_slices(model_input) -> np.ndarray:
    """A served model's input as uint8 (N, H, W, 3): whole numbers within 0..255 are taken as they are;
    fractional, out-of-range or normalised values are refused.

    A volume whose values all lie within 0..1, or whose brightest voxel is below ``RAW_MAX_AT_LEAST``,
    is refused too: a scan's raw intensities reach far above that, and a server casts normalised or
    z-scored floats to whole numbers before the model sees them (``mlflow models serve`` parses JSON
    straight to the signature's uint8: -0.7, 1.3, 2.9 arrive as 0, 1, 2).
    """
    images = np.asarray(model_input)
    numeric = np.issubdtype(images.dtype, np.number) and images.size
    if not numeric or images.min() < 0 or images.max() > 255 or not np.array_equal(images, np.round(images)):
        shown = f"{images.dtype} values {images.min()}..{images.max()}" if numeric else f"{images.dtype} {images.shape}"
        raise InputError(f"expected {RAW_SLICES}, got {shown}: pass the raw slices, not normalised ones")
    if images.max() <= 1:
        raise InputError(f"expected {RAW_SLICES}, got values within 0..1 only: normalised slices (a server casts "
                         "them to 0 and 1); pass the raw slices")
    if images.max() < RAW_MAX_AT_LEAST:
        raise InputError(f"expected {RAW_SLICES}, got values within 0..{images.max()} only: z-scored or otherwise "
                         "normalised slices (a server casts them to whole numbers); pass the raw slices")
    return images.astype(np.uint8)

