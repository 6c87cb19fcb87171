"""The ``radiogenomics`` stage's work: the study of Buda, Saha & Mazurowski (2019) on this pipeline.

For every patient, the shape features of the manual mask (the set's ground truth) and of the
automatic one (segmented out of fold by the ``cv`` stage) are tested against the genomic clusters
of ``data.csv``: Fisher's exact test of feature quartile x cluster, Bonferroni over the tests run with
each kind of masks (manual and automatic are two families), the paper's pre-registered pairs marked;
AUCs of each feature for cluster k against the rest; and the agreement of automatic with manual
features (the paper's point: automatic masks keep the associations). Without cross-validation
(``cv.folds: 0``) only the manual masks are studied.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from unet.config import PipelineConfig
from unet.io import nifti
from unet.io.atomic import atomic_file
from unet.io.kaggle import DATA_CSV, patient_id, read_mask
from unet.io.layout import json_safe, read_manifest
from unet.radiogenomics.clinical import CLUSTER_COLUMNS, PATIENT, read_clinical_csv
from unet.radiogenomics.features import patient_features
from unet.radiogenomics.figures import heatmap
from unet.radiogenomics.stats import ALPHA, FEATURES, association_tests, feature_aucs

log = logging.getLogger(__name__)


def manual_masks(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each patient's ground-truth mask stack (S, H, W) as the raw tree holds it, in slice order."""
    return {patient: np.stack([read_mask(path) for path in rows.sort_values("index")["mask_path"]])
            for patient, rows in manifest.groupby("patient", sort=True)}


def automatic_masks(config: PipelineConfig, patients: list[str]) -> dict[str, np.ndarray]:
    """Each patient's out-of-fold prediction (the cv stage's NIfTI), (S, H, W)."""
    return {p: nifti.read_volume(config.cv.predictions_dir / f"{p}_pred.nii.gz")[0] for p in patients}


def feature_table(masks: dict[str, np.ndarray], spacing: tuple[float, float, float], kind: str) -> pd.DataFrame:
    """One row a patient: its clinical key, the mask kind and ``patient_features``."""
    rows = [{"patient": patient_id(folder), "folder": folder, "masks": kind, **patient_features(mask, spacing)}
            for folder, mask in masks.items()]
    return pd.DataFrame(rows)


def agreement(manual: pd.DataFrame, automatic: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per feature: Pearson r and mean absolute difference of automatic against manual, patient by patient."""
    both = manual.merge(automatic, on="patient", suffixes=("_manual", "_automatic"))
    out = {}
    for feature in FEATURES:
        pair = both[[f"{feature}_manual", f"{feature}_automatic"]].astype(float).dropna()
        r = float(np.corrcoef(pair.iloc[:, 0], pair.iloc[:, 1])[0, 1]) if len(pair) > 2 else float("nan")
        out[feature] = {"n": int(len(pair)), "pearson_r": r,
                        "mean_abs_difference": float((pair.iloc[:, 0] - pair.iloc[:, 1]).abs().mean())}
    return out


def without_clinical_row(features: pd.DataFrame, clinical: pd.DataFrame) -> list[str]:
    """The patients with masks whom ``data.csv`` does not list: the tests cannot use them (they are
    said, in the log, the metrics and the report, not dropped silently by the join)."""
    return sorted(set(features["patient"]) - set(clinical[PATIENT].astype(str)))


def study(features: pd.DataFrame, clinical: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """The tests and AUCs for each mask kind."""
    tests, aucs = [], []
    for kind, table in features.groupby("masks", sort=False):
        for result in association_tests(table, clinical):
            result.pop("table", None)
            tests.append({**result, "masks": kind})
        aucs += [{**row, "masks": kind} for row in feature_aucs(table, clinical)]
    return {"tests": tests, "aucs": aucs}


def run(config: PipelineConfig) -> dict[str, Any]:
    """Everything the stage does: features, tests, AUCs, agreement, the files and the figure."""
    rg = config.radiogenomics
    manifest = read_manifest(config.prepare.manifest_path)
    clinical = read_clinical_csv(config.data.raw_root / DATA_CSV)
    tables = [feature_table(manual_masks(manifest), rg.spacing_mm, "manual")]
    if config.cv.folds:
        tables.append(feature_table(automatic_masks(config, sorted(manifest["patient"].unique())), rg.spacing_mm,
                                    "automatic"))
    features = pd.concat(tables, ignore_index=True)
    unlisted = without_clinical_row(features, clinical)
    if unlisted:
        log.warning("radiogenomics: %d patient(s) have no row in %s and are left out of every test: %s",
                    len(unlisted), config.data.raw_root / DATA_CSV, ", ".join(unlisted))
    result = {"patients": int(manifest["patient"].nunique()), "patients_without_clinical_row": unlisted,
              "masks": list(features["masks"].unique()), "spacing_mm": list(rg.spacing_mm),
              "variables": list(CLUSTER_COLUMNS), "alpha": ALPHA, **study(features, clinical)}
    if len(tables) == 2:
        result["agreement"] = agreement(*tables)
    with atomic_file(rg.features_path, "w") as handle:
        features.to_csv(handle, index=False)
    with atomic_file(rg.metrics_path, "w") as handle:
        json.dump(json_safe(result), handle, indent=2)
    heatmap(result["tests"], rg.figure)
    found = [t for t in result["tests"] if t["significant"]]
    log.info("radiogenomics: %d tests (%s masks, Bonferroni within each kind), %d significant: %s",
             len(result["tests"]), " and ".join(result["masks"]), len(found),
             ", ".join(f"{t['feature']} x {t['variable']} ({t['masks']}, p={t['p']:.2g})" for t in found) or "none")
    return result
