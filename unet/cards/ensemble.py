"""The fold ensemble's model card (``<registry.model_name>-cv``): the same page as a single model's, with
the ensemble's parts and its out-of-fold evaluation.

Every patient is scored by the one fold model that never saw it; the ensemble (the mean of all the fold
models' probabilities) has seen every patient, so those figures estimate a fold model on new patients,
and the ensemble itself has a held-out score only with ``cv.holdout_test``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from unet.cards.model import (
    _INTENDED_USE,
    _count,
    _cv_section,
    _limits,
    _metric_rows,
    _postprocess_text,
    _preprocessing_section,
    _source_text,
    _title,
    dsc_spread,
    fmt,
    synthetic_set,
)


def _ensemble_section(fold_metas: Sequence[Mapping[str, Any]], rule: Mapping[str, Any] | None,
                      threshold: float) -> list[str]:
    first = fold_metas[0] if fold_metas else {}
    config = dict(first.get("model_config") or {})
    train = dict(first.get("train_config") or {})
    return [
        "## Model", "",
        f"- An ensemble of {len(fold_metas)} fold models, each a {config.get('variant', 'n/a')} U-Net (features "
        f"{config.get('features', 'n/a')}, depth {config.get('depth', 'n/a')}, "
        f"{_count(first.get('parameters'))} parameters): the mean of their tumour probabilities on the input's grid",
        *(f"- Fold {k}: `{Path(str(meta.get('path', 'n/a'))).name}`, sha256 `{meta.get('sha256', 'n/a')}`, "
          f"epoch {meta.get('best_epoch', meta.get('epoch', 'n/a'))}" for k, meta in enumerate(fold_metas)),
        f"- Each trained {train.get('epochs', 'n/a')} epochs, optimizer {train.get('optimizer', 'n/a')}, lr "
        f"{train.get('lr', 'n/a')}, batch {train.get('batch_size', 'n/a')}",
        f"- Decision threshold {threshold} on the mean probability, then "
        + _postprocess_text(_ensemble_rule_text(rule)), ""]


def _ensemble_rule_text(rule: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``ensemble.json``'s rule as the single model's card words it (decided on the out-of-fold masks)."""
    if not rule:
        return None
    return {"largest_component": rule.get("largest_component", True),
            "val_dsc_largest_component": rule.get("oof_dsc_largest_component"),
            "val_dsc_no_postprocess": rule.get("oof_dsc_no_postprocess"), "val_volumes": rule.get("patients")}


def _out_of_fold_section(cv: Mapping[str, Any], per_patient: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Evaluation", "",
             "Protocol: per-volume DSC over every patient, each scored by the fold model that never saw it "
             "(out of fold), post-processed as the rule says. The ensemble itself has seen every patient, so "
             "these figures estimate one fold model on new patients; it has no held-out score of its own"
             + (" but the held-out test part below." if cv.get("holdout") else "."), ""]
    spread = dsc_spread([row["dsc"] for row in per_patient])
    if spread:
        lines += [f"Out-of-fold per-volume DSC: **{spread['mean']:.3f} ± {spread['sd']:.3f}** (mean ± SD, "
                  f"n = {spread['n']}), median {spread['median']:.3f} (IQR {spread['q1']:.3f}–{spread['q3']:.3f}), "
                  f"range {spread['min']:.3f}–{spread['max']:.3f}.", ""]
    if rows := _metric_rows(cv):
        lines += ["| metric (per volume, out of fold) | mean | median |", "| --- | --- | --- |", *rows, ""]
    if missed := cv.get("missed_patients"):
        lines += [f"Missed (DSC under 0.1): {', '.join(m['patient'] for m in missed)}; without them the mean is "
                  f"{fmt(cv.get('dsc_mean_without_missed'))}.", ""]
    if failed := cv.get("failed_folds"):
        lines += [f"**Folds that did not learn** (mean DSC under {cv.get('failed_fold_below')}): "
                  f"{', '.join(str(k) for k in failed)}; this ensemble is never champion.", ""]
    if holdout := cv.get("holdout"):
        lines += [f"Held-out test part ({holdout.get('n_volumes', 'n/a')} patients, in no fold): the ensemble's "
                  f"per-volume DSC mean {fmt(holdout.get('dsc_mean'))}, median {fmt(holdout.get('dsc_median'))}.", ""]
    return lines


def ensemble_card(*, fold_metas: Sequence[Mapping[str, Any]], cv: Mapping[str, Any],
                  per_patient: Sequence[Mapping[str, Any]], data: Mapping[str, Any] | None = None,
                  rule: Mapping[str, Any] | None = None, threshold: float = 0.5, seed: int | None = None,
                  name: str = "lgg-unet-cv") -> str:
    """The fold ensemble's card as markdown. ``fold_metas``: ``read_checkpoint_meta`` of each fold's
    model; ``cv``: ``cv.json``; ``per_patient``: ``cv_per_patient.csv``'s rows; ``rule``: ``ensemble.json``."""
    data = dict(data or {})
    synthetic = synthetic_set(data)
    first = fold_metas[0] if fold_metas else {}
    variant = dict(first.get("model_config") or {}).get("variant", "unknown")
    pre = dict(dict(first.get("metadata") or {}).get("preprocess") or {})
    folds = [{"fold": k, "dsc": v, "n_volumes": sum(str(r.get("fold")) == str(k) for r in per_patient)}
             for k, v in sorted((cv.get("fold_dsc_mean") or {}).items(), key=lambda kv: int(kv[0]))]
    protocol = (f"{len(folds)} patient-level folds (cv.folds {len(folds)}"
                + (f", cv.seed {seed}" if seed is not None else "") + "), dealt by tumour burden: every patient "
                "is in one fold's test part, and that fold's model trained on the other folds' patients")
    lines = [*_title(variant, synthetic, name), *_ensemble_section(fold_metas, rule, threshold), *_INTENDED_USE,
             *_preprocessing_section(pre), "## Training data", "", "- " + _source_text(data, synthetic),
             f"- {protocol}", "", *_out_of_fold_section(cv, per_patient),
             *_cv_section({"per_fold": folds, "protocol": f"{len(folds)}-fold cross-validation over patients"}),
             *_limits(synthetic), f"_Written by lgg-unet on {date.today().isoformat()}._", ""]
    return "\n".join(lines)
