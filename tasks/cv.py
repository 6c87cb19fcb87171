"""Tasks of the ``cv`` stage: one a fold (its training and its test patients), and the report."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from prefect import get_run_logger

from tasks import cv_pool, mlflow_model
from tasks.cards import log_ensemble_card
from tasks.common import each_task, stage_task
from tasks.postgres import without_password
from tasks.registry import move_aliases, register_version
from tasks.reports import cv_report, figures, publish
from tasks.tracking import log_datasets, log_metrics, repo_root, run_datasets, tracking_uri, use_experiment
from unet.config import PipelineConfig
from unet.cv import stage
from unet.cv.folds import fold_config
from unet.io.layout import read_manifest
from unet.models.checkpoint import weights_digest

TRACKING_STORE_VARIABLE = "LGG_TRACKING_STORE"


def log_fold_epoch(fold: int, epoch: int, metrics: dict) -> None:
    get_run_logger().info("fold %d, epoch %d: loss %.4f, val DSC %.4f", fold, epoch, metrics["loss"], metrics["val_dsc"])


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage: one task a fold here, in turn (``fold-<k>``), or one flow run a fold on the work
    pool (``cv.executor: pool``); then the fold models as one registered ensemble (``registered``)."""
    each = cv_pool.on_pool if cv_pool.executor(config) == "pool" else each_task("fold", in_turn=True)
    metrics = stage.run(config, each=each, on_epoch=log_fold_epoch, tracking_store=tracking_store(config))
    if config.cv.folds:
        metrics["registered"] = register_ensemble(config, metrics)
    return metrics


def tracking_store(config: PipelineConfig, environ=os.environ) -> str:
    """Where this stage's MLflow records go, without a password: the store a shared tracking server
    keeps them in when its launcher says so (``LGG_TRACKING_STORE``), else the tracking URI; a SQLite
    file in the repository by its path from the repository root (as params.yaml writes it), so that
    ``cv.json`` names no folder of this machine."""
    uri = without_password(environ.get(TRACKING_STORE_VARIABLE) or tracking_uri(config.mlflow, environ))
    root = Path(environ.get("DVC_ROOT") or repo_root()).resolve()
    if uri.startswith("sqlite:///") and Path(uri.removeprefix("sqlite:///")).resolve().is_relative_to(root):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).resolve().relative_to(root)}"
    return uri


ENSEMBLE_SCORE = "cv_dsc_mean"  # the registry decides on it: per-volume DSC over every patient, out of fold


@stage_task(name="register-ensemble")
def register_ensemble(config: PipelineConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """One MLflow run for the cross-validation (its figures, the per-patient table), the fold models as
    one pyfunc, registered as ``<registry.model_name>-cv``; its champion moves only to a better CV DSC."""
    experiment_id = use_experiment(config.mlflow)
    client = MlflowClient()
    run_id = client.create_run(experiment_id, run_name=f"cv-{config.cv.folds}-folds", tags={
        "stage": "cv", "mlflow.note.content": f"{config.cv.folds}-fold cross-validation; the fold models' ensemble"
    }).info.run_id
    client.log_artifact(run_id, str(config.cv.per_patient_path), "cv")
    if metrics.get("fold_runs"):  # where and when each fold ran: kept here, not in cv.json
        client.log_dict(run_id, metrics["fold_runs"], "cv/fold_runs.json")
    manifest = read_manifest(config.prepare.manifest_path)
    checkpoints, rule = stage.fold_checkpoints(config), stage.ensemble_path(config)
    info = mlflow_model.log_ensemble(run_id, checkpoints, mlflow_model.example_slices(manifest),
                                     f"cv-ensemble-{run_id[:8]}", rule=rule)
    datasets = run_datasets(config)
    log_datasets(run_id, datasets, ["all"])  # every patient, each scored by the fold model that never saw it
    log_metrics(run_id, {f"cv_{k}": v for k, v in metrics.items()} | {ENSEMBLE_SCORE: metrics["dsc_mean"]},
                model_id=info.model_id, datasets=datasets)  # onto the ensemble too, naming the data
    client.set_terminated(run_id)
    name = f"{config.registry.model_name}-cv"
    version = register_version(name, run_id, info.model_uri, ENSEMBLE_SCORE, float(metrics["dsc_mean"]),
                               weights_digest(checkpoints, [rule]))
    log_ensemble_card(config, run_id, name, version, metrics, checkpoints, rule)
    return {"model_name": name, "version": int(version), "run_id": run_id,
            **move_aliases(name, version, float(metrics["dsc_mean"]), config.registry.champion_floor,
                           held=stage.failed_folds_said(metrics))}


def publish_report(config: PipelineConfig, metrics: dict[str, Any]) -> None:
    """The cross-validation's tables, then each fold's training curve (as many as the report embeds)."""
    curves = [(fold_config(config, k).train.curve_path, f"fold {k}: loss and validation DSC by epoch")
              for k in range(config.cv.folds)]
    report = cv_report(metrics) + figures(curves)
    publish("lgg-cv", report, description=f"{metrics['folds']}-fold cross-validation")
