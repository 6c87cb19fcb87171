"""The model card: a markdown page on the model, its data, its evaluation with the spread, its use and limits.

``model_card(...)`` gives the markdown (for a registry version's description), ``write_model_card``
writes it to a file; ``read_checkpoint_meta`` and ``read_metrics`` gather what it needs from the
checkpoint and the evaluate stage's outputs.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from unet.config import PipelineConfig
from unet.errors import InputError
from unet.io.digest import file_sha256
from unet.models.checkpoint import load_checkpoint

CARD_NAME = "MODEL_CARD.md"  # a card's file name, beside the exports and in a run's export/ folder
_DEFAULTS = PipelineConfig()  # where the stages write by default, for the card's hints

_INTENDED_USE = [
    "## Intended use", "",
    "Research on automatic segmentation of the FLAIR abnormality of lower-grade glioma (WHO grade II and "
    "III) in adult brain MRI, one patient volume at a time, on images like the training data: axial, "
    "skull-on slices (no skull stripping) as in the Kaggle LGG set, with pre-contrast, FLAIR and "
    "post-contrast sequences co-registered on one grid.", ""]

_SYNTHETIC_SETS = {"mni152": "synthetic patients drawn on the MNI152 2009a brain template (nilearn's), with "
                             "generated lesions and sequences",
                   "phantom": "synthetic ellipse phantoms"}

_REAL_DATA_LIMIT = ("- Trained on one public collection from few institutions and scanners; expect lower accuracy on "
                    "other scanners, field strengths, protocols and populations.")
_SYNTHETIC_LIMIT = ("- Trained on synthetic images only: its figures measure the pipeline on generated data and say "
                    "nothing of its accuracy on any real scan.")

_LIMITS = [
    "- Only lower-grade glioma's FLAIR abnormality: not high-grade glioma, metastases, other lesions, "
    "post-operative cavities or children; not enhancing tumour or necrosis subregions.",
    "- Only the inputs described above: skull-stripped, sagittal or coronal slices, sequences that are not "
    "co-registered, or another normalisation give unreliable masks.",
    "- Where its validation volumes scored better so, it outlines one connected region at most (the largest "
    "component; see Model); it may outline a region in a scan without tumour.", ""]


def _limits(synthetic: str | None) -> list[str]:
    return ["## Limits", "", "- Research use only; not a medical device, not cleared or approved by any regulator.",
            _SYNTHETIC_LIMIT if synthetic else _REAL_DATA_LIMIT, *_LIMITS]


# ---- inputs -----------------------------------------------------------------------------------


def read_checkpoint_meta(checkpoint: Path) -> dict[str, Any]:
    """What a model card needs from a checkpoint: configs, metadata, epochs, size and hash (no weights)."""
    state = load_checkpoint(checkpoint, map_location="cpu")
    parameters = sum(int(v.numel()) for k, v in state["model"].items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    keep = ("model_config", "train_config", "metadata", "epoch", "best_score", "best_epoch")
    return {**{k: state[k] for k in keep if k in state}, "path": str(checkpoint),
            "sha256": file_sha256(checkpoint), "parameters": parameters}


def read_metrics(eval_json: Path, per_patient_csv: Path | None = None) -> dict[str, Any]:
    """The evaluate stage's summary (metrics/eval.json) with its per-volume rows (metrics/per_patient.csv)."""
    try:
        metrics = json.loads(Path(eval_json).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{eval_json}: not readable evaluate-stage metrics ({exc}); run dvc repro evaluate") from None
    if per_patient_csv is not None:
        with Path(per_patient_csv).open(newline="") as handle:
            metrics["per_volume"] = [dict(row) for row in csv.DictReader(handle)]
    return metrics


# ---- numbers ----------------------------------------------------------------------------------


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def fmt(value: Any, digits: int = 3) -> str:
    number = as_float(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1e}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


def dsc_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, SD (n - 1), median, quartiles, min and max of per-volume DSCs."""
    v = np.asarray([x for x in values if as_float(x) is not None], np.float64)
    if v.size == 0:
        return {}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "median": float(median), "q1": float(q1), "q3": float(q3), "min": float(v.min()), "max": float(v.max())}


def _per_volume(metrics: Mapping[str, Any], split: str) -> list[float]:
    rows = metrics.get("per_volume") or []
    return [float(r["dsc"]) for r in rows if r.get("split", split) == split and as_float(r.get("dsc")) is not None]


def _metric_rows(summary: Mapping[str, Any]) -> list[str]:
    names = {"dsc": "DSC (after largest component)", "dsc_no_postprocess": "DSC (threshold only)", "iou": "IoU",
             "precision": "precision", "recall": "recall", "hd95": "HD95 (voxels or mm)",
             "avd_relative": "relative volume difference"}
    rows = []
    for key, name in names.items():
        if f"{key}_mean" in summary:
            rows.append(f"| {name} | {fmt(summary.get(f'{key}_mean'))} | {fmt(summary.get(f'{key}_median'))} |")
    return rows


# ---- sections ---------------------------------------------------------------------------------


def synthetic_set(data: Mapping[str, Any]) -> str | None:
    """What a synthetic training set was (``data.synthetic.anatomy``); None for real data."""
    if str(data.get("source", "")).lower() != "synthetic":
        return None
    anatomy = str(data.get("anatomy") or dict(data.get("synthetic") or {}).get("anatomy") or "")
    return _SYNTHETIC_SETS.get(anatomy, "a synthetic set (its kind not recorded)")


def _title(variant: str, synthetic: str | None, name: str = "lgg-unet") -> list[str]:
    lines = [f"# Model card: {name} ({variant} U-Net)", "",
             "> **Research use only. Not a medical device.** Its output has not been validated for diagnosis, "
             "treatment planning or any clinical decision.", ""]
    if synthetic:
        lines += [f"> **Trained on synthetic data** ({synthetic}; data.source: synthetic): a pipeline "
                  "demonstration that has never seen a real scan. Do not use it on patients' images.", ""]
    return lines


def _model_section(checkpoint_meta: Mapping[str, Any]) -> list[str]:
    config = dict(checkpoint_meta.get("model_config") or {})
    meta = dict(checkpoint_meta.get("metadata") or {})
    train = dict(checkpoint_meta.get("train_config") or {})
    variant = config.get("variant", "unknown")
    return [
        "## Model", "",
        f"- Architecture: {variant} U-Net "
        + ("(padded convolutions + BatchNorm, as mateuszbuda/brain-segmentation-pytorch)" if variant == "reference"
           else "(Ronneberger et al. 2015, unpadded convolutions)" if variant == "paper" else ""),
        f"- Features {config.get('features', 'n/a')}, depth {config.get('depth', 'n/a')}, "
        f"{config.get('in_channels', 3)} input channels, {config.get('out_channels', 'n/a')} output channel(s); "
        f"{_count(checkpoint_meta.get('parameters'))} parameters",
        f"- Checkpoint: `{Path(str(checkpoint_meta.get('path', 'n/a'))).name}`, sha256 "
        f"`{checkpoint_meta.get('sha256', 'n/a')}`; "
        + (f"epoch {checkpoint_meta['best_epoch']} of {checkpoint_meta.get('epoch', 'n/a')} "
           f"(train.select: {train.get('select', 'best')})"
           if "best_epoch" in checkpoint_meta else f"saved at epoch {checkpoint_meta.get('epoch', 'n/a')}")
        + f" (validation score {fmt(checkpoint_meta.get('best_score'))})",
        f"- Training: {train.get('epochs', 'n/a')} epochs, optimizer {train.get('optimizer', 'n/a')}, "
        f"lr {train.get('lr', 'n/a')}, batch {train.get('batch_size', 'n/a')}, loss: soft Dice"
        + (f" + {train['ce_weight']} x weight-map cross-entropy" if as_float(train.get("ce_weight")) else ""),
        f"- Decision threshold {meta.get('threshold', 0.5)} on the tumour probability, then "
        + _postprocess_text(meta.get("postprocess")), ""]


def _postprocess_text(rule: Mapping[str, Any] | None) -> str:
    if not rule:
        return "the largest 3-D connected component (the reference protocol)"
    kept = rule.get("largest_component", True)
    margin = "" if rule.get("margin") is None else (
        f"; the rule keeps it unless it costs more than {fmt(rule['margin'])} DSC there" if kept
        else f"; it cost more than the rule's margin of {fmt(rule['margin'])} DSC there")
    scores = (f" (validation DSC {fmt(rule.get('val_dsc_largest_component'))} with it, "
              f"{fmt(rule.get('val_dsc_no_postprocess'))} without, {rule.get('val_volumes', 'n/a')} volumes{margin})")
    return ("the largest 3-D connected component" if kept
            else "every region above it, not only the largest") + scores


def _preprocessing_section(pre: Mapping[str, Any]) -> list[str]:
    size = pre.get("image_size", "the checkpoint's image_size")
    return [
        "## Preprocessing it expects", "",
        "- Three channels in this order: pre-contrast, FLAIR, post-contrast, as uint8 slices (volumes of another "
        "type scaled to 0..255 per sequence over the volume); a missing pre- or post-contrast sequence is "
        "replaced by FLAIR, as in the training set.",
        f"- The reference per-volume normalisation (`unet.preprocess`, `Segmenter.prepare`): voxels under "
        f"{pre.get('crop_threshold', 0.1)} x the volume maximum set to 0, crop to the head's box, pad square, "
        f"resize to {size} px, clip to the {pre.get('clip_percentiles', [10, 99])} percentiles and z-score each "
        f"channel over the volume's interior slices (statistics: {pre.get('statistics', 'all')}).",
        "- Whole volumes: one slice alone is normalised on itself and is less reliable.",
        "- The exported ONNX/TorchScript graphs take the preprocessed (B, 3, H, W) float32 slices and give "
        "probabilities (B, C, H, W); mapping back to the scan's grid and the threshold are not in the graph.", ""]


_LGG_SET = ("the LGG segmentation dataset (Buda et al. 2019, Kaggle mateuszbuda/lgg-mri-segmentation): 110 "
            "patients of The Cancer Imaging Archive's TCGA-LGG collection, 3929 axial slices of 256 x 256, manual "
            "FLAIR-abnormality masks")


def _source_text(data: Mapping[str, Any], synthetic: str | None) -> str:
    if synthetic:
        return f"Source: synthetic: {synthetic}, in the Kaggle set's layout and formats"
    if data.get("source"):
        return f"Source: {data['source']}: {_LGG_SET}"
    return f"Source: not recorded with the checkpoint (see params.yaml data.source); the recipe is for {_LGG_SET}"


def _training_data_section(data: Mapping[str, Any], split: Mapping[str, Any], synthetic: str | None) -> list[str]:
    return [
        "## Training data", "",
        "- " + _source_text(data, synthetic),
        "- Split by patient (no patient in two parts): "
        + (", ".join(f"{k} {v}" for k, v in split.items()) if split else "not recorded with the checkpoint "
           "(see params.yaml prepare.split)"), ""]


def _no_metrics_hint() -> list[str]:
    evaluate = _DEFAULTS.evaluate
    return [f"No evaluation metrics given: run the evaluate stage (dvc repro evaluate) and pass "
            f"{evaluate.metrics_path} and {evaluate.per_patient_path} (lgg-export --metrics ... --per-patient ...).",
            ""]


def _evaluation_section(metrics: Mapping[str, Any]) -> list[str]:
    if not metrics:
        return _no_metrics_hint()
    split = str(metrics.get("split", "test"))
    tta = " with test-time flip averaging" if metrics.get("tta") else ""
    lines = [f"Protocol: per-volume Dice similarity coefficient (DSC) on the {split} split "
             f"({metrics.get('n_volumes', 'n/a')} patients), as the reference computes it: every slice predicted, "
             "the probabilities mapped back to the original grid, thresholded, post-processed as the model's rule "
             f"says (see Model), and the 3-D DSC taken per patient{tta}.", ""]
    spread = dsc_spread(_per_volume(metrics, split))
    if spread:
        lines += [f"Per-volume DSC: **{spread['mean']:.3f} ± {spread['sd']:.3f}** (mean ± SD, n = {spread['n']}), "
                  f"median {spread['median']:.3f} (IQR {spread['q1']:.3f}–{spread['q3']:.3f}), "
                  f"range {spread['min']:.3f}–{spread['max']:.3f}.", ""]
    else:
        lines += [f"Per-volume DSC: mean {fmt(metrics.get('dsc_mean'))}, median {fmt(metrics.get('dsc_median'))} "
                  "(no per-volume scores given, so no spread).", ""]
    rows = _metric_rows(metrics)
    if rows:
        lines += ["| metric (per volume) | mean | median |", "| --- | --- | --- |", *rows, ""]
    if "global_dice" in metrics:
        lines += [f"Pooled over all voxels: global Dice {fmt(metrics.get('global_dice'))}; tumour-slice Dice "
                  f"{fmt(metrics.get('tumour_slice_dice'))}.", ""]
    val = metrics.get("val") or {}
    if val:
        lines += [f"Validation split ({val.get('n_volumes', 'n/a')} patients, used to pick the epoch): per-volume "
                  f"DSC mean {fmt(val.get('dsc_mean'))}, median {fmt(val.get('dsc_median'))}.", ""]
    n = as_float(metrics.get("n_volumes"))
    if n is not None and n < 20:
        lines += [f"With {int(n)} test patients these figures are uncertain; the cross-validated estimate covers every "
                  "patient, but on a small set it moves with each missed lesion (its report names them).", ""]
    return lines


def _cv_section(cv: Mapping[str, Any]) -> list[str]:
    folds = cv.get("per_fold") or [{"fold": k, "dsc": v} for k, v in enumerate(cv.get("dsc") or [])]
    values = [as_float(f.get("dsc", f.get("dsc_mean"))) for f in folds]
    lines = ["## Cross-validation", ""]
    protocol = cv.get("protocol") or (f"{len(folds)}-fold cross-validation over patients (prepare.split.method "
                                      "kfold: each fold's patients are its test part once)")
    lines += [protocol + ".", ""]
    if folds:
        lines += ["| fold | per-volume DSC (mean) | volumes |", "| --- | --- | --- |"]
        lines += [f"| {f.get('fold', k)} | {fmt(v)} | {f.get('n_volumes', 'n/a')} |"
                  for k, (f, v) in enumerate(zip(folds, values))]
        spread = dsc_spread([v for v in values if v is not None])
        if spread:
            lines += ["", f"Across folds: {spread['mean']:.3f} ± {spread['sd']:.3f} (mean ± SD), "
                          f"range {spread['min']:.3f}–{spread['max']:.3f}."]
    if cv.get("figure"):
        lines += ["", f"![per-fold DSC]({cv['figure']})"]
    return lines + [""]


# ---- the card ---------------------------------------------------------------------------------


def model_card(*, checkpoint_meta: Mapping[str, Any], metrics: Mapping[str, Any], cv: Mapping[str, Any] | None = None,
               data: Mapping[str, Any] | None = None, split: Mapping[str, Any] | None = None,
               name: str = "lgg-unet") -> str:
    """The model card as markdown: the model, training data and split, the evaluation protocol and
    per-volume DSC with its spread, cross-validation when given, intended use, the preprocessing it
    expects, limits.

    ``checkpoint_meta`` as ``read_checkpoint_meta`` gives it; ``metrics`` as ``read_metrics`` (eval.json
    with ``per_volume`` rows for the spread); ``cv``: ``{"dsc": [per-fold mean DSC], "figure": "cv.png"}``
    or ``{"per_fold": [{"fold", "dsc", "n_volumes"}]}``; ``data`` and ``split``: the params sections.
    """
    data = dict(data or checkpoint_meta.get("data") or {})
    split = dict(split or checkpoint_meta.get("split") or {})
    variant = dict(checkpoint_meta.get("model_config") or {}).get("variant", "unknown")
    pre = dict(dict(checkpoint_meta.get("metadata") or {}).get("preprocess") or {})
    synthetic = synthetic_set(data)
    lines = [*_title(variant, synthetic, name), *_model_section(checkpoint_meta), *_INTENDED_USE,
             *_preprocessing_section(pre), *_training_data_section(data, split, synthetic),
             "## Evaluation", "", *_evaluation_section(metrics)]
    if cv:
        lines += _cv_section(cv)
    lines += _limits(synthetic)
    lines += [f"_Written by lgg-unet on {date.today().isoformat()}._", ""]
    return "\n".join(lines)


def write_model_card(path: Path, *, checkpoint_meta: Mapping[str, Any], metrics: Mapping[str, Any],
                     cv: Mapping[str, Any] | None = None, data: Mapping[str, Any] | None = None,
                     split: Mapping[str, Any] | None = None) -> Path:
    """``model_card(...)`` written to ``path`` (its folder made); returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card(checkpoint_meta=checkpoint_meta, metrics=metrics, cv=cv, data=data, split=split))
    return path
