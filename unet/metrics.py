"""Segmentation metrics: the reference protocol's per-volume DSC, and the figures around it.

The reference (mateuszbuda/brain-segmentation-pytorch, `utils.dsc` and `train.dsc_per_volume`)
scores one patient at a time: the sigmoid output of every slice is stacked into an (S, H, W)
volume, rounded (so a voxel is tumour when p > 0.5: `np.round(0.5)` is 0), reduced to its
largest 3-D connected component, and compared with the ground truth by DSC. `postprocess` and
`dice` reproduce that; `volume_scores` adds IoU, precision, recall, HD95 and volume differences.

Conventions, stated once (every array is (S, H, W): slices, rows, columns; masks are bool or 0/1):

- Connectivity. The reference calls `medpy.filter.binary.largest_connected_component`, which labels
  with `scipy.ndimage.label`'s default structure: face neighbours only (6-connectivity in 3-D),
  not `skimage.measure.label`'s full connectivity. `REFERENCE_CONNECTIVITY = 1` is that default;
  `connectivity=3` gives full (26-) connectivity, where voxels touching at an edge or a corner
  are one object. Ties between equally large components keep the first in raster order.
- Empty masks. DSC and IoU are 1.0 when prediction and truth are both empty (`empty_value`; the
  reference computes 0/0 = NaN there, but never meets it: every LGG patient has tumour). Precision
  is NaN when nothing is predicted, recall and the relative volume difference when the truth is
  empty. HD95 is 0.0 when both are empty and NaN when exactly one is. Each such case carries a
  flag in the scores (`pred_empty`, `target_empty`, `*_defined`), and `summarise` leaves NaN out
  of means and medians and counts what it left out, by reason.
- HD95. Surfaces are the mask voxels with a face neighbour (6-connectivity) outside the mask or
  outside the array. Distances are Euclidean between voxel centres, scaled per axis by
  `spacing` (S, H, W order). HD95 is the 95th percentile (numpy's linear interpolation) of both
  directed surface-distance sets pooled, as in `medpy.metric.binary.hd95`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "REFERENCE_CONNECTIVITY",
    "SUMMARISED",
    "dice",
    "global_dice",
    "largest_component_3d",
    "postprocess",
    "slice_dice_mean",
    "summarise",
    "tumour_slice_dice",
    "volume_scores",
]

REFERENCE_CONNECTIVITY = 1

# The per-volume metrics that `summarise` averages.
SUMMARISED = ("dsc", "iou", "precision", "recall", "hd95", "avd_voxels", "avd_relative")

_FACE_NEIGHBOURS = ndimage.generate_binary_structure(3, 1)


def _binary_volume(name: str, array: np.ndarray) -> np.ndarray:
    """A bool (S, H, W) view of a bool or 0/1 array; a ValueError that says what to fix otherwise."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(
            f"{name}: expected one (S, H, W) volume, got shape {array.shape}; "
            "stack one patient's slices along axis 0."
        )
    if array.dtype == bool:
        return array
    if not ((array == 0) | (array == 1)).all():
        values = np.unique(array)[:5]
        raise ValueError(
            f"{name}: expected a binary mask of 0 and 1, got values {values.tolist()}...; "
            "divide 0/255 masks by 255, or threshold probabilities with postprocess()."
        )
    return array.astype(bool)


def _binary_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, target = _binary_volume("pred", pred), _binary_volume("target", target)
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {pred.shape} but target {target.shape}; score the same patient's volumes.")
    return pred, target


def _check_connectivity(connectivity: int) -> None:
    if connectivity not in (1, 2, 3):
        raise ValueError(
            f"connectivity must be 1 (faces, the reference), 2 (faces and edges) or 3 (full), got {connectivity!r}."
        )


def largest_component_3d(mask: np.ndarray, *, connectivity: int = REFERENCE_CONNECTIVITY) -> np.ndarray:
    """The largest 3-D connected component of `mask` as uint8 0/1; an empty mask stays empty."""
    _check_connectivity(connectivity)
    mask = _binary_volume("mask", mask)
    structure = ndimage.generate_binary_structure(3, connectivity)
    labels, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # background
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


def postprocess(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    largest_component: bool = True,
    *,
    connectivity: int = REFERENCE_CONNECTIVITY,
) -> np.ndarray:
    """Sigmoid outputs (S, H, W) -> uint8 mask: p > threshold, then the largest 3-D component."""
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 3:
        raise ValueError(
            f"probabilities: expected one (S, H, W) volume, got shape {probabilities.shape}; "
            "drop the channel axis and stack one patient's slices along axis 0."
        )
    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}; the reference uses 0.5.")
    if probabilities.size and not (probabilities.min() >= 0.0 and probabilities.max() <= 1.0):
        raise ValueError(
            f"probabilities: values must lie in [0, 1], got min {probabilities.min()} and max {probabilities.max()}; "
            "apply torch.sigmoid to logits first (NaN means the model diverged)."
        )
    mask = (probabilities > threshold).astype(np.uint8)
    return largest_component_3d(mask, connectivity=connectivity) if largest_component else mask


def _ratio(numerator: int, denominator: int, undefined: float = math.nan) -> float:
    return numerator / denominator if denominator else undefined


def dice(pred: np.ndarray, target: np.ndarray, *, empty_value: float = 1.0) -> float:
    """2|A n B| / (|A| + |B|) over a whole volume; `empty_value` when both are empty."""
    pred, target = _binary_pair(pred, target)
    overlap = int(np.count_nonzero(pred & target))
    return _ratio(2 * overlap, int(np.count_nonzero(pred)) + int(np.count_nonzero(target)), empty_value)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(
            f"spacing must be three finite sizes > 0 in (slice, row, column) order, got {tuple(spacing)!r}; "
            "use (1.0, 1.0, 1.0) for voxel units (the LGG set publishes no spacing)."
        )
    return values  # type: ignore[return-value]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask or outside the array."""
    return mask & ~ndimage.binary_erosion(mask, structure=_FACE_NEIGHBOURS, border_value=0)


def _hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """HD95 of two non-empty masks, computed inside their joint bounding box grown by one voxel.

    Every surface voxel of both masks lies in that box, so the distance transforms there are
    exact; the one-voxel rim keeps a crop edge from passing for a mask edge.
    """
    rows = np.nonzero(pred | target)
    box = tuple(slice(max(int(r.min()) - 1, 0), int(r.max()) + 2) for r in rows)
    pred_surface, target_surface = _surface(pred[box]), _surface(target[box])
    to_target = ndimage.distance_transform_edt(~target_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[target_surface]
    return float(np.percentile(np.concatenate([to_target, to_pred]), 95))


def volume_scores(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    empty_value: float = 1.0,
) -> dict[str, float | int | bool]:
    """Every per-volume metric of one patient, with the flags that say which ones are defined.

    Keys: dsc, iou (`empty_value` when both masks are empty), precision (NaN when nothing is
    predicted), recall (NaN when the truth is empty), hd95 (0.0 both empty, NaN one empty),
    avd_voxels = |V_pred - V_true|, avd_relative = avd_voxels / V_true (NaN when V_true = 0),
    voxels_pred, voxels_true, pred_empty, target_empty, precision_defined, recall_defined,
    hd95_defined, avd_relative_defined.
    """
    pred, target = _binary_pair(pred, target)
    spacing = _check_spacing(spacing)
    n_pred, n_true = int(np.count_nonzero(pred)), int(np.count_nonzero(target))
    overlap = int(np.count_nonzero(pred & target))
    pred_empty, target_empty = n_pred == 0, n_true == 0
    if pred_empty and target_empty:
        hd95 = 0.0
    elif pred_empty or target_empty:
        hd95 = math.nan
    else:
        hd95 = _hd95(pred, target, spacing)
    return {
        "dsc": _ratio(2 * overlap, n_pred + n_true, empty_value),
        "iou": _ratio(overlap, n_pred + n_true - overlap, empty_value),
        "precision": _ratio(overlap, n_pred),
        "recall": _ratio(overlap, n_true),
        "hd95": hd95,
        "avd_voxels": abs(n_pred - n_true),
        "avd_relative": _ratio(abs(n_pred - n_true), n_true),
        "voxels_pred": n_pred,
        "voxels_true": n_true,
        "pred_empty": pred_empty,
        "target_empty": target_empty,
        "precision_defined": not pred_empty,
        "recall_defined": not target_empty,
        "hd95_defined": pred_empty == target_empty,
        "avd_relative_defined": not target_empty,
    }


def _exclusion_reason(scores: dict) -> str:
    pred_empty, target_empty = bool(scores["pred_empty"]), bool(scores["target_empty"])
    if pred_empty and target_empty:
        return "both_empty"
    if target_empty:
        return "target_empty"
    if pred_empty:
        return "pred_empty"
    return "undefined"


def summarise(scores: Sequence[dict]) -> dict:
    """Mean and median of each metric over the volumes where it is defined (not NaN).

    Returns {"n_volumes", "n_pred_empty", "n_target_empty", "n_both_empty", and per metric in
    SUMMARISED: {"mean", "median", "n", "excluded": {reason: count}}}; a reason is both_empty,
    target_empty, pred_empty or undefined. A metric defined nowhere has mean and median NaN.
    """
    needed = (*SUMMARISED, "pred_empty", "target_empty")
    for index, row in enumerate(scores):
        missing = [key for key in needed if key not in row]
        if missing:
            raise ValueError(f"summarise: scores[{index}] lacks {missing}; pass the dicts that volume_scores returns.")
    pred_empty = [bool(row["pred_empty"]) for row in scores]
    target_empty = [bool(row["target_empty"]) for row in scores]
    summary: dict = {
        "n_volumes": len(scores),
        "n_pred_empty": sum(pred_empty),
        "n_target_empty": sum(target_empty),
        "n_both_empty": sum(p and t for p, t in zip(pred_empty, target_empty)),
    }
    for metric in SUMMARISED:
        values, excluded = [], {}
        for row in scores:
            value = float(row[metric])
            if math.isnan(value):
                reason = _exclusion_reason(row)
                excluded[reason] = excluded.get(reason, 0) + 1
            else:
                values.append(value)
        summary[metric] = {
            "mean": float(np.mean(values)) if values else math.nan,
            "median": float(np.median(values)) if values else math.nan,
            "n": len(values),
            "excluded": excluded,
        }
    return summary


def _as_volumes(name: str, volumes: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(volumes, np.ndarray) and volumes.ndim == 3:
        volumes = [volumes]
    return [_binary_volume(f"{name}[{i}]", v) for i, v in enumerate(volumes)]


def _slice_counts(preds, targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slice of every volume, in order: overlap, |pred|, |target|."""
    preds, targets = _as_volumes("preds", preds), _as_volumes("targets", targets)
    if len(preds) != len(targets):
        raise ValueError(
            f"got {len(preds)} predicted volumes but {len(targets)} targets; pass them patient by patient."
        )
    counts = []
    for i, (pred, target) in enumerate(zip(preds, targets)):
        if pred.shape != target.shape:
            raise ValueError(f"volume {i}: pred has shape {pred.shape} but target {target.shape}.")
        counts.append([np.count_nonzero(a, axis=(1, 2)) for a in (pred & target, pred, target)])
    if not counts:
        raise ValueError("no volumes to score; pass at least one (S, H, W) prediction and target.")
    overlap, n_pred, n_true = (np.concatenate(column).astype(np.int64) for column in zip(*counts))
    return overlap, n_pred, n_true


def global_dice(preds, targets, *, empty_value: float = 1.0) -> float:
    """DSC of all voxels of all volumes pooled, so large tumours weigh more than small ones."""
    overlap, n_pred, n_true = _slice_counts(preds, targets)
    return _ratio(2 * int(overlap.sum()), int(n_pred.sum() + n_true.sum()), empty_value)


def tumour_slice_dice(preds, targets) -> float:
    """Mean slice DSC over the slices whose ground truth holds tumour (NaN if there are none).

    False positives on tumour-free slices are not counted here; the voxel-pooled and
    per-volume figures count them.
    """
    overlap, n_pred, n_true = _slice_counts(preds, targets)
    tumour = n_true > 0
    if not tumour.any():
        return math.nan
    return float(np.mean(2 * overlap[tumour] / (n_pred[tumour] + n_true[tumour])))


def slice_dice_mean(preds, targets) -> float:
    """Mean slice DSC over every slice, a correctly empty slice counting 1.0.

    Shown for comparison only: with about 65% of LGG slices tumour-free, the free 1.0s inflate it.
    """
    overlap, n_pred, n_true = _slice_counts(preds, targets)
    total = n_pred + n_true
    per_slice = np.ones(total.shape, dtype=np.float64)
    some = total > 0
    per_slice[some] = 2 * overlap[some] / total[some]
    return float(np.mean(per_slice))


def most_tumour_slices(*masks: np.ndarray | None, count: int = 6) -> list[int]:
    """Indices of the ``count`` slices with the most tumour in any of the (S, H, W) masks, in slice
    order; the middle slice when there is none (the slices an overlay shows)."""
    given = [m for m in masks if m is not None]
    area = sum(m.reshape(len(m), -1).sum(axis=1, dtype=np.int64) for m in given)  # signed: -area must not wrap
    ranked = [int(k) for k in np.argsort(-area, kind="stable")[:count] if area[k] > 0]
    return sorted(ranked) or [len(given[0]) // 2]

