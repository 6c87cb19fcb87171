"""Cross-validation: every patient segmented once out of fold; unchanged folds kept; a killed fold resumes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest

from unet.augment import stage as augment
from unet.config import parse_config
from unet.cv import stage
from unet.cv.folds import assignments
from unet.io.layout import read_manifest
from unet.prepare.stage import prepare_dataset
from unet.weightmaps import stage as weightmaps

from conftest import make_raw_tree, tiny_stage_params

FOLDS = 3


def cv_params(root, **cv) -> dict:
    params = tiny_stage_params(root, epochs=1)
    params["cv"] = {"folds": FOLDS, "epochs": 2, "val_fraction": 0.2, "out_dir": str(root / "cv"),
                    "metrics_dir": str(root / "metrics"), **cv}
    return params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Nine patients prepared, their weight maps and elastic copies (of every patient: each trains
    some fold), without Prefect (the stages' own functions)."""
    root = tmp_path_factory.mktemp("cv")
    make_raw_tree(root / "raw/kaggle_3m", patients=9, slices=6, size=32)
    config = parse_config(cv_params(root))
    manifest = prepare_dataset(config.data.raw_root, config.prepare)
    weightmaps.run(config)
    summary = augment.run(config)
    assert summary["train_patients"] == manifest["patient"].nunique()
    return root, config


def test_every_patient_is_in_exactly_one_test_fold(prepared):
    _, config = prepared
    manifest = read_manifest(config.prepare.manifest_path)
    folds = assignments(manifest, config)
    tested = [p for fold in folds for p, part in fold.items() if part == "test"]
    assert sorted(tested) == sorted(manifest["patient"].unique())
    assert all({"train", "val", "test"} <= set(fold.values()) for fold in folds)


def test_cross_validation_scores_every_patient_once_out_of_fold(prepared):
    root, config = prepared
    metrics = stage.run(config)
    table = pd.read_csv(config.cv.per_patient_path)
    manifest = read_manifest(config.prepare.manifest_path)
    assert sorted(table["patient"]) == sorted(manifest["patient"].unique()) and table["patient"].is_unique
    assert set(table["fold"]) == set(range(FOLDS)) and list(table.columns[:3]) == ["patient", "fold", "split"]
    saved = json.loads(config.cv.metrics_path.read_text())
    # cv.json holds the results; where and when the folds ran is returned (and logged), kept beside them
    assert saved == {k: v for k, v in metrics.items() if k != "fold_runs"} and saved["folds"] == FOLDS
    assert saved["n_volumes"] == 9 and [r["fold"] for r in metrics["fold_runs"]] == list(range(FOLDS))
    assert all(stage.read_attempts(config.cv.fold_dir(k))[-1]["finished"] for k in range(FOLDS))
    assert {"dsc_mean", "dsc_median", "iou_mean", "hd95_mean", "fold_dsc_std"} <= set(saved)
    assert set(saved["fold_dsc_mean"]) == {"0", "1", "2"}
    predictions = sorted(p.name for p in config.cv.predictions_dir.glob("*_pred.nii.gz"))
    assert predictions == sorted(f"{p}_pred.nii.gz" for p in manifest["patient"].unique())
    for fold in range(FOLDS):  # each test patient's fold never trained or validated on it
        parts = json.loads((config.cv.fold_dir(fold) / "fold.json").read_text())["parts"]
        assert set(parts["test"]) == set(table.loc[table["fold"] == fold, "patient"])
        assert not set(parts["test"]) & (set(parts["train"]) | set(parts["val"]))


def test_an_unchanged_fold_is_kept_and_a_changed_one_reruns_alone(prepared, caplog):
    _, config = prepared
    stage.run(config)
    kept = {k: (config.cv.fold_dir(k) / "models/best.pt").stat().st_mtime_ns for k in range(FOLDS)}
    (config.cv.fold_dir(1) / "scores.csv").unlink()  # fold 1 lost its results
    with caplog.at_level(logging.INFO, logger="unet"):
        stage.run(config)
    assert "fold 0: unchanged" in caplog.text and "fold 2: unchanged" in caplog.text
    assert "fold 1: unchanged" not in caplog.text
    after = {k: (config.cv.fold_dir(k) / "models/best.pt").stat().st_mtime_ns for k in range(FOLDS)}
    assert after[0] == kept[0] and after[2] == kept[2]


def test_a_killed_fold_resumes_after_its_last_epoch(prepared, caplog):
    root, _ = prepared
    config = parse_config(cv_params(root, out_dir=str(root / "cv-killed"), epochs=3))
    manifest = read_manifest(config.prepare.manifest_path)
    folds = assignments(manifest, config)

    def kill(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt  # as a kill after the epoch's checkpoint was written

    with pytest.raises(KeyboardInterrupt):
        stage.run_fold(config, manifest, 0, folds[0], on_epoch=kill)
    assert not json.loads((config.cv.fold_dir(0) / "fold.json").read_text())["done"]
    with caplog.at_level(logging.INFO, logger="unet"):
        table = stage.run_fold(config, manifest, 0, folds[0])
    assert "resuming after epoch 2" in caplog.text
    history = pd.read_csv(config.cv.fold_dir(0) / "train_history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and len(table) == sum(p == "test" for p in folds[0].values())


def test_cv_off_writes_a_note_and_an_empty_table(prepared):
    root, _ = prepared
    config = parse_config(cv_params(root, folds=0, metrics_dir=str(root / "off")))
    assert stage.run(config)["folds"] == 0
    assert pd.read_csv(config.cv.per_patient_path).empty


def test_held_out_patients_score_each_fold_and_the_ensemble(prepared):
    root, _ = prepared
    config = parse_config(cv_params(root, out_dir=str(root / "cv-holdout"), metrics_dir=str(root / "holdout"),
                                    holdout_test=True, folds=2, epochs=1))
    manifest = read_manifest(config.prepare.manifest_path)
    metrics = stage.run(config)
    test = set(manifest.loc[manifest["split"] == "test", "patient"])
    table = pd.read_csv(config.cv.per_patient_path)
    assert test and not test & set(table["patient"])  # the held-out patients sit out of every fold
    holdout = metrics["holdout"]
    assert holdout["patients"] == len(test) and len(holdout["fold_dsc_means"]) == 2
    assert 0 <= holdout["ensemble_dsc_mean"] <= 1 and holdout["best_single_fold_dsc_mean"] >= holdout["single_fold_dsc_mean"]


def nudge_folds(config, seed_text: str) -> None:
    """The fold checkpoints' weights moved by 1e-4: what another training of the folds would leave."""
    import hashlib

    import torch

    from unet.models.checkpoint import load_checkpoint, save_checkpoint

    generator = torch.Generator().manual_seed(int(hashlib.sha256(seed_text.encode()).hexdigest()[:8], 16))
    for path in stage.fold_checkpoints(config):
        state = load_checkpoint(path)
        state["model"] = {k: v + 1e-4 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                          for k, v in state["model"].items()}
        save_checkpoint(path, state)


@pytest.mark.integration
def test_the_fold_ensemble_is_registered_and_serves_raw_slices(prepared, prefect_api, tmp_path):
    import os
    import subprocess
    import sys

    import numpy as np

    from flows import cv as cv_flow
    from tasks import cv as cv_tasks
    from unet.io.kaggle import read_image
    from unet.predict.ensemble import EnsembleSegmenter

    root, _ = prepared
    config = parse_config(cv_params(root, out_dir=str(root / "cv-ens"), metrics_dir=str(root / "ens"), folds=2,
                                    epochs=1) | {"registry": {"model_name": "lgg-test-cv-base", "champion_floor": 0.0}})
    metrics = cv_flow.run(config)
    manifest = read_manifest(config.prepare.manifest_path)
    rows = manifest[manifest["patient"] == manifest["patient"].iloc[0]].sort_values("index")
    slices = np.stack([read_image(p) for p in rows["image_path"]])
    expected = EnsembleSegmenter.from_checkpoints(stage.fold_checkpoints(config)).segment(slices)
    np.save(tmp_path / "slices.npy", slices)
    code = ("import sys, mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/lgg-test-cv-base-cv@champion'); "
            "np.save(sys.argv[2], m.predict(np.load(sys.argv[1])))")
    subprocess.run([sys.executable, "-c", code, tmp_path / "slices.npy", tmp_path / "mask.npy"], cwd=tmp_path,
                   env=os.environ, check=True, timeout=180)
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), expected)
    first = cv_tasks.register_ensemble(config, metrics)  # a rerun with the same fold weights: no new version
    assert (first["version"], first["decision"]) == (1, "unchanged")
    nudge_folds(config, "worse")  # other trainings: other weights
    worse = cv_tasks.register_ensemble(config, {**metrics, "dsc_mean": max(metrics["dsc_mean"] - 0.1, 0.0)})
    nudge_folds(config, "better")
    better = cv_tasks.register_ensemble(config, {**metrics, "dsc_mean": metrics["dsc_mean"] + 0.1})
    assert (worse["version"], worse["decision"], better["version"], better["decision"]) == (2, "kept", 3, "promoted")
    # the ensemble's page lists the data its figures come from: every patient, out of fold
    from mlflow import MlflowClient

    client = MlflowClient()
    version = client.get_model_version_by_alias("lgg-test-cv-base-cv", "champion")
    model_id = version.source.removeprefix("models:/")  # mlflow 3.17's sqlite registry leaves version.model_id None
    model = client.get_logged_model(model_id)
    # in the cv run's experiment (MLflow alone files it under Default when no run is active)
    assert model.experiment_id == client.get_run(better["run_id"]).info.experiment_id != "0"
    named = {m.key: m.dataset_name for m in model.metrics}
    assert named["cv_dsc_mean"] == "lgg-prepared-all" and named["cv_folds"] == "lgg-prepared-all"
    (dataset,) = client.get_run(better["run_id"]).inputs.dataset_inputs
    assert (dataset.dataset.name, [(t.key, t.value) for t in dataset.tags]) == \
        ("lgg-prepared-all", [("mlflow.data.context", "cross-validation")])
    # the ensemble has a card: the version's description and export/MODEL_CARD.md in its run
    card = version.description
    for phrase in ("# Model card: lgg-test-cv-base-cv", "An ensemble of 2 fold models", "Fold 1:", "out of fold",
                   "no held-out score of its own", "Trained on synthetic data", "| 0 |", "| 1 |"):
        assert phrase in card, phrase
    local = client.download_artifacts(better["run_id"], "export/MODEL_CARD.md", str(tmp_path))
    assert Path(local).read_text() == card


def test_a_fold_that_did_not_learn_and_the_missed_patients_are_said():
    from flows.summary import cv_summary
    from tasks.reports import cv_report

    table = pd.DataFrame({"patient": [f"P{k}" for k in range(6)], "fold": [0, 0, 1, 1, 2, 2],
                          "dsc": [0.0, 0.02, 0.8, 0.9, 0.85, 0.0], "recall": [0.0, 0.01, 0.8, 0.9, 0.8, 0.0]}
                         ).assign(**{c: 0.5 for c in stage.SCORES if c not in ("dsc", "recall")})
    metrics = stage.summarise(table, 3, failed_below=0.25)
    assert metrics["failed_folds"] == [0] and [m["patient"] for m in metrics["missed_patients"]] == ["P0", "P1", "P5"]
    assert metrics["dsc_mean_without_missed"] == pytest.approx((0.8 + 0.9 + 0.85) / 3)
    said = cv_summary(metrics)
    assert "fold 0 did not learn" in said and "missed (DSC under 0.1): P0 (fold 0), P1 (fold 0), P5 (fold 2)" in said
    assert "**Fold 0 did not learn**" in cv_report(metrics) and "3 patient(s) missed" in cv_report(metrics)
    assert stage.failed_folds_said(metrics).startswith("1 fold(s) did not learn (fold 0 DSC 0.010")


def test_a_fold_key_follows_what_the_fold_trains_with():
    """cv.epochs set: train.epochs (the main training's) does not retrain the folds; cv.epochs does."""
    from unet.cv.folds import fold_key

    def key(**sections):
        config = parse_config({"cv": {"folds": 2, "epochs": 4, **sections.get("cv", {})},
                               "train": {"epochs": 8, **sections.get("train", {})}})
        return fold_key({"A": "train", "B": "val"}, config, "digest")

    assert key(train={"epochs": 20}) == key()
    assert key(cv={"epochs": 5}) != key() and key(train={"lr": 0.0123}) != key()
    assert key(cv={"epochs": None}, train={"epochs": 20}) != key(cv={"epochs": None})  # unset: train.epochs counts
