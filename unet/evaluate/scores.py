"""The ``evaluate`` stage's work: score whole patient volumes at the original 256x256 geometry.

Each patient's preprocessed slices are predicted, the probabilities mapped back (un-resize,
un-pad, un-crop) onto the original grid and compared with the original masks: per-volume DSC
after a 0.5 threshold and the largest 3-D component (the reference protocol), the same without
the post-processing, IoU, precision, recall, HD95, volume difference; and, over a split, global
Dice and Dice over tumour slices only (a mean over slices that counts correct empty slices as 1.0
inflates the figure; ``slice_dice_mean`` is reported beside them to show by how much).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from unet.predict.segmenter import predict_prepared
from unet.metrics import dice, global_dice, postprocess, slice_dice_mean, summarise, tumour_slice_dice, volume_scores
from unet.preprocess import Geometry, to_original
from unet.prepare.raw import read_mask

GEOMETRY_FIELDS = tuple(Geometry.__dataclass_fields__)


@dataclass
class PatientResult:
    patient: str
    split: str
    scores: dict[str, Any]
    prediction: np.ndarray  # (S, H, W) uint8, post-processed, original geometry
    truth: np.ndarray  # (S, H, W) uint8


def geometry_of(rows: pd.DataFrame) -> Geometry:
    """The crop/pad/resize record that prepare stored with every slice of a patient."""
    return Geometry(**{name: int(rows[name].iloc[0]) for name in GEOMETRY_FIELDS})


def original_masks(rows: pd.DataFrame) -> np.ndarray:
    """The patient's masks as the raw tree holds them, in slice order: (S, H, W) 0/1."""
    return np.stack([read_mask(path) for path in rows.sort_values("index")["mask_path"]])


def evaluate_patient(model: nn.Module, images: np.ndarray, rows: pd.DataFrame, device: torch.device, *,
                     threshold: float = 0.5, tta: bool = False) -> PatientResult:
    """Predict one patient's prepared slices (S, size, size, 3) and score them at the original geometry."""
    rows = rows.sort_values("index")
    prepared = np.ascontiguousarray(np.asarray(images, dtype=np.float32).transpose(0, 3, 1, 2))
    probs = np.clip(to_original(predict_prepared(model, prepared, device, tta=tta), geometry_of(rows)), 0, 1)
    truth = original_masks(rows)
    prediction = postprocess(probs, threshold=threshold)
    scores = volume_scores(prediction, truth)
    scores["dsc_no_postprocess"] = dice(postprocess(probs, threshold=threshold, largest_component=False), truth)
    return PatientResult(str(rows["patient"].iloc[0]), str(rows["split"].iloc[0]), scores, prediction, truth)


def split_metrics(results: list[PatientResult]) -> dict[str, Any]:
    """Flat metrics of one split part: ``dsc_mean``, ``dsc_median``, ... and the dataset-level Dice."""
    summary = summarise([r.scores for r in results])
    flat: dict[str, Any] = {k: summary[k] for k in ("n_volumes", "n_pred_empty", "n_target_empty")}
    for metric, stats in summary.items():
        if isinstance(stats, dict):
            flat[f"{metric}_mean"], flat[f"{metric}_median"] = stats["mean"], stats["median"]
            if stats["excluded"]:
                flat[f"{metric}_excluded"] = dict(stats["excluded"])
    raw = [r.scores["dsc_no_postprocess"] for r in results]
    flat["dsc_no_postprocess_mean"], flat["dsc_no_postprocess_median"] = float(np.mean(raw)), float(np.median(raw))
    preds, truths = [r.prediction for r in results], [r.truth for r in results]
    flat["global_dice"] = global_dice(preds, truths)
    flat["tumour_slice_dice"] = tumour_slice_dice(preds, truths)
    flat["slice_dice_mean"] = slice_dice_mean(preds, truths)
    return flat


def per_patient_table(results: list[PatientResult]) -> pd.DataFrame:
    columns = ["dsc", "dsc_no_postprocess", "iou", "precision", "recall", "hd95", "avd_voxels", "avd_relative",
               "voxels_pred", "voxels_true"]
    return pd.DataFrame([{"patient": r.patient, "split": r.split, **{c: r.scores[c] for c in columns}}
                         for r in results])


def json_safe(value: Any) -> Any:
    """NaN and inf are not JSON: write them as null (the counts say how many volumes were left out)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value
