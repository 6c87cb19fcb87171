"""The ``evaluate`` stage's work: score whole patient volumes at the original 256x256 geometry.

Each patient's raw slices go through the shipped model's path (``Segmenter``: preprocess,
predict, map back onto the original grid) and are compared with the original masks: per-volume DSC
after a 0.5 threshold and the largest 3-D component (the reference protocol), the same without
the post-processing, IoU, precision, recall, HD95, volume difference; and, over a split, global
Dice and Dice over tumour slices only (a mean over slices that counts correct empty slices as 1.0
inflates the figure; ``slice_dice_mean`` is reported beside them to show by how much).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from unet.io.kaggle import read_image, read_mask
from unet.metrics import dice, global_dice, slice_dice_mean, summarise, tumour_slice_dice, volume_scores
from unet.predict.segmenter import Segmenter


@dataclass
class PatientResult:
    patient: str
    split: str
    scores: dict[str, Any]
    prediction: np.ndarray  # (S, H, W) uint8, post-processed, original geometry
    truth: np.ndarray  # (S, H, W) uint8


def original_images(rows: pd.DataFrame) -> np.ndarray:
    """The patient's raw slices as the Kaggle tree holds them, in slice order: (S, H, W, 3) uint8."""
    return np.stack([read_image(path) for path in rows.sort_values("index")["image_path"]])


def original_masks(rows: pd.DataFrame) -> np.ndarray:
    """The patient's masks as the raw tree holds them, in slice order: (S, H, W) 0/1."""
    return np.stack([read_mask(path) for path in rows.sort_values("index")["mask_path"]])


def evaluate_patient(segmenter: Segmenter, rows: pd.DataFrame) -> PatientResult:
    """Segment one patient's raw slices as the shipped model does and score them at the original geometry.

    The same path as ``lgg-predict`` and the MLflow model (``Segmenter``: preprocessing, network,
    the way back to the input grid, threshold and, where the model's rule says so, the largest 3-D
    component), so the number evaluated is the model shipped. Both post-processings are scored too
    (``dsc_no_postprocess``, ``dsc_largest_component``).
    """
    rows = rows.sort_values("index")
    probs = segmenter.probabilities(original_images(rows))
    truth = original_masks(rows)
    prediction = segmenter.mask(probs)
    scores = volume_scores(prediction, truth)
    scores["dsc_no_postprocess"] = dice(segmenter.mask(probs, largest_component=False), truth)
    scores["dsc_largest_component"] = dice(segmenter.mask(probs, largest_component=True), truth)
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
    columns = ["dsc", "dsc_no_postprocess", "dsc_largest_component", "iou", "precision", "recall", "hd95", "avd_voxels",
               "avd_relative", "voxels_pred", "voxels_true"]
    return pd.DataFrame([{"patient": r.patient, "split": r.split, **{c: r.scores[c] for c in columns}}
                         for r in results])


