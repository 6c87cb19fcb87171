"""Which MLflow run trained a checkpoint: the train stage tags its run with the weights' digest
(``weights_sha256``, ``unet.models.checkpoint.weights_digest``) and the logged model, and the evaluate
and register stages find the run of the ``best.pt`` they are given by that tag.

So no run id sits in a file that DVC or git keeps: a run id differs on every run, the weights of a
seeded training do not, and a rerun leaves dvc.lock and the committed metrics as they were. The
registry tags its versions with the same digest (``tasks.registry``): one version a set of weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

from tasks.tracking import use_store
from unet.config import PipelineConfig
from unet.errors import InputError
from unet.models.checkpoint import WEIGHTS_TAG, weights_digest

MODEL_TAGS = ("model_id", "model_uri")  # the run's logged model, beside it


def tag_trained_weights(run_id: str, checkpoint: Path, model: Mapping[str, str]) -> None:
    """Name the run by the weights it trained and its logged ``model`` (last, once all is logged)."""
    client = MlflowClient()
    for key in MODEL_TAGS:
        client.set_tag(run_id, key, model[key])
    client.set_tag(run_id, WEIGHTS_TAG, weights_digest([checkpoint]))


def train_record(config: PipelineConfig, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The train run of the checkpoint in the workspace (``train.best_path``), with MLflow pointed at
    the store that holds it: ``run_id``, ``experiment_id``, ``model_id``, ``model_uri``, and the
    weights' digest (``weights``), read once here.

    The first finished run tagged with the weights' digest: a retraining that gives the same weights
    (fixed seeds, same data and recipe) adds a run, and the scores and the registry stay with the
    first one. A clear error when the store holds none (another store, or a model trained before runs
    were tagged)."""
    use_store(config.mlflow, environ)
    best = config.train.best_path
    digest = weights_digest([best])  # a missing or bad checkpoint: its own clear error
    client = MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.{WEIGHTS_TAG} = '{digest}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time ASC"], max_results=1) if experiments else []
    if not runs:
        raise InputError(
            f"{best}: no finished MLflow run in {mlflow.get_tracking_uri()} trained these weights (tag "
            f"{WEIGHTS_TAG} = {digest[:12]}...): set MLFLOW_TRACKING_URI to the store the train stage used, or "
            "retrain (dvc repro -f train)")
    run = runs[0]
    return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "weights": digest,
            **{key: run.data.tags[key] for key in MODEL_TAGS if key in run.data.tags}}
