"""Patient-level folds: every patient in exactly one test fold, stratified as the split is.

Fold ``k``'s test part is the k-th group of patients dealt by tumour burden (``unet.split``'s
``kfold``); a ``val_fraction`` of the remaining patients picks the fold model's best epoch, the
rest train it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd

from unet.config import PipelineConfig, SplitConfig
from unet.split import split_patients


def burden(manifest: pd.DataFrame) -> dict[str, float]:
    """Tumour slices per patient: what the folds are stratified by."""
    return manifest.groupby("patient")["has_tumour"].sum().astype(float).to_dict()


def assignments(manifest: pd.DataFrame, config: PipelineConfig) -> list[dict[str, str]]:
    """For each fold, patient -> train / val / test."""
    cv = config.cv
    return [split_patients(burden(manifest), SplitConfig(method="kfold", folds=cv.folds, fold=k,
                                                          val_fraction=cv.val_fraction, seed=cv.seed), keys="cv")
            for k in range(cv.folds)]


def fold_manifest(manifest: pd.DataFrame, assignment: dict[str, str]) -> pd.DataFrame:
    """The prepared manifest with its ``split`` column replaced by one fold's parts."""
    return manifest.assign(split=manifest["patient"].map(assignment))


def fold_key(assignment: dict[str, str], config: PipelineConfig, data_digest: str) -> str:
    """What a fold's results depend on: its patients, the model and recipe, the data. A fold whose key
    is unchanged keeps its results; another key retrains it."""
    trains = fold_config(config, 0).train  # what a fold trains with: cv.epochs, when set, not train.epochs
    recipe = {"assignment": sorted(assignment.items()), "model": config.model.model_dump(mode="json"),
              "train": trains.model_dump(mode="json", exclude={"resume", "out_dir", "metrics_dir", "workers", "threads"}),
              "threshold": config.evaluate.threshold, "data": data_digest}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fold_config(config: PipelineConfig, fold: int) -> PipelineConfig:
    """The train section for fold ``fold``: the main recipe (with the elastic copies, which the augment
    stage makes for every patient a fold trains on), its own folders, resumable."""
    cv = config.cv
    train = config.train.model_copy(update={
        "out_dir": cv.fold_dir(fold) / "models", "metrics_dir": cv.fold_dir(fold), "resume": True,
        "epochs": cv.epochs or config.train.epochs})
    return config.model_copy(update={"train": train})


def fold_parts(assignment: dict[str, str]) -> dict[str, Any]:
    parts: dict[str, list[str]] = {}
    for patient, part in sorted(assignment.items()):
        parts.setdefault(part, []).append(patient)
    return parts
