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

import functools
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from unet.config import PipelineConfig
from unet.fanout import Each, serial
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


def kind_features(kind: str, config: PipelineConfig, manifest: pd.DataFrame) -> pd.DataFrame:
    """The feature table of one kind of masks: ``manual`` (the set's) or ``automatic`` (out of fold)."""
    if kind == "manual":
        masks = manual_masks(manifest)
    else:
        masks = automatic_masks(config, sorted(manifest["patient"].unique()))
    return feature_table(masks, config.radiogenomics.spacing_mm, kind)


def describe(result: dict[str, Any]) -> str:
    """The stage's one line for the log."""
    found = [t for t in result["tests"] if t["significant"]]
    return (f"radiogenomics: {len(result['tests'])} tests ({' and '.join(result['masks'])} masks, Bonferroni within "
            f"each kind), {len(found)} significant: "
            + (", ".join(f"{t['feature']} x {t['variable']} ({t['masks']}, p={t['p']:.2g})" for t in found) or "none"))


def run(config: PipelineConfig, *, each: Each = serial) -> dict[str, Any]:
    """The stage: the features of each kind of masks (one ``each`` item a kind; automatic only with
    cross-validation), then the tests, AUCs, agreement, the files and the figure; returns the result."""
    rg = config.radiogenomics
    manifest = read_manifest(config.prepare.manifest_path)
    clinical = read_clinical_csv(config.data.raw_root / DATA_CSV)
    kinds = ["manual", "automatic"] if config.cv.folds else ["manual"]
    tables = each(functools.partial(kind_features, config=config, manifest=manifest), kinds)
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
    log.info("%s", describe(result))
    return result
