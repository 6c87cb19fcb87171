"""The MLflow edge shared by the stages: where runs are stored, the train run's record, metrics.

Where runs go: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri`` from params.yaml, else
``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlartifacts/``. ``<repo>`` is the folder
holding dvc.yaml; under ``dvc exp run --temp/--queue`` DVC's ``DVC_ROOT`` names the real repository,
so runs never land in a temporary copy that is deleted afterwards.

MLflow's active run is per thread and Prefect may run tasks in worker threads, so everything here
logs through ``MlflowClient`` with the run id passed in. The train stage opens its run
(``tasks.train.train_run``) and, once the model is logged, tags it with the weights' digest: the
evaluate and register stages find the run of the checkpoint they are given by that tag
(``tasks.trained``), so no run id sits in a file that DVC or git keeps.

Datasets: the prepared data is logged as one MLflow dataset a split part (``lgg-prepared-train``,
``-val``, ``-test``; ``-all`` for the cross-validation), each digested by DVC's hash of the
prepared folder, and every metric names the part it was measured on (``dataset_for``): a logged
model's page then lists the datasets its figures come from, as MLflow 3 links them.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric

from unet.config import MlflowConfig, PipelineConfig, PrepareConfig
from unet.errors import EnvironmentMismatch, InputError
from unet.io.atomic import atomic_file
from unet.io.layout import read_manifest


def repo_root(start: Path | None = None) -> Path:
    """The folder holding dvc.yaml at or above ``start`` (the CWD); ``start`` itself if none does."""
    start = (start or Path.cwd()).resolve()
    return next((folder for folder in (start, *start.parents) if (folder / "dvc.yaml").is_file()), start)


def tracking_uri(config: MlflowConfig, environ: Mapping[str, str] = os.environ, cwd: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else params' ``mlflow.tracking_uri``, else the repo's SQLite file.

    A relative SQLite path in params is taken from the repository root, not the CWD.
    """
    root = Path(environ.get("DVC_ROOT") or repo_root(cwd))
    uri = environ.get("MLFLOW_TRACKING_URI") or config.tracking_uri
    if not uri:
        return f"sqlite:///{root / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{root / uri.removeprefix('sqlite:///')}"
    return uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """``mlartifacts/<experiment>`` beside a SQLite store; None (the server decides) otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    folder = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / re.sub(r"[^\w.-]+", "-", experiment)
    return folder.as_uri()


# the MLflow UI opens the experiment in its model-training view, not the GenAI one
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development",
                   "mlflow.note.content": "lgg-unet: U-Net segmentation of LGG FLAIR abnormality; one run per "
                                          "training (train stage), scored by the evaluate stage"}

# MLflow's client retries a request 7 times with a growing backoff (about 4 minutes a call to a server
# that went away); a stage fails faster, and training keeps going through an outage (tasks.train)
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


def use_store(config: MlflowConfig, environ: Mapping[str, str] = os.environ) -> str:
    """Point MLflow (this process) at the tracking store, checked to answer first; return its URI."""
    for key, value in HTTP_RETRIES.items():
        os.environ.setdefault(key, value)
    uri = check_store(config, environ)
    mlflow.set_tracking_uri(uri)
    return uri


def use_experiment(config: MlflowConfig, environ: Mapping[str, str] = os.environ) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed."""
    uri = use_store(config, environ)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return client.create_experiment(config.experiment, artifact_location=artifact_location(uri, config.experiment),
                                        tags=EXPERIMENT_TAGS)
    if experiment.lifecycle_stage != "active":
        raise InputError(
            f"MLflow experiment {config.experiment!r} in {uri} is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or set mlflow.experiment "
            "in params.yaml to another name"
        )
    for key, value in EXPERIMENT_TAGS.items():
        if experiment.tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
    return experiment.experiment_id


def write_run_file(path: Path, record: dict[str, Any]) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(record, handle, indent=2)


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries MLflow can chart: numbers (bools and strings left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def log_metrics(run_id: str, metrics: Mapping[str, Any], step: int = 0, *, model_id: str | None = None,
                datasets: Mapping[str, Dataset] | None = None) -> None:
    """Numeric entries of ``metrics`` at ``step``, to the run named (never the thread's active run);
    with ``model_id`` they also show on that logged model's page (MLflow 3 logged models); with
    ``datasets`` (``split_datasets``) each names the split part it was measured on."""
    now = int(time.time() * 1000)
    datasets = datasets or {}

    def metric(key: str, value: float) -> Metric:
        dataset = datasets.get(dataset_for(key))
        return Metric(key, value, now, step, model_id=model_id, dataset_name=dataset and dataset.name,
                      dataset_digest=dataset and dataset.digest)

    MlflowClient().log_batch(run_id, metrics=[metric(k, v) for k, v in numeric(metrics).items()])


DATASET_NAME = "lgg-prepared"
CONTEXTS = {"train": "training", "val": "validation", "test": "test", "all": "cross-validation"}
PART_PREFIXES = (("epoch_val_", "val"), ("best_val_", "val"), ("val_", "val"), ("test_", "test"), ("cv_", "all"),
                 ("train_", "train"), ("loss", "train"))


def dataset_for(key: str) -> str | None:
    """The split part a metric is measured on, by its name: ``val_dsc`` val, ``test_iou_mean`` test,
    ``cv_dsc_mean`` every patient (out of fold), ``loss`` the training slices; None for the rest
    (speeds, learning rate, export checks)."""
    return next((part for prefix, part in PART_PREFIXES if key.startswith(prefix)), None)


def prepared_data_hash(prepared: Path, root: Path) -> tuple[str, str]:
    """The prepared data's hash and where it came from.

    DVC's md5 of the prepare stage's output from ``dvc.lock`` when that entry is this folder and its
    file count and size still match (the dvc CLI must not run inside a stage: the repo is locked);
    else the md5 of ``manifest.parquet`` (the data was prepared outside DVC).
    """
    prepared = Path(prepared).resolve()
    lock = root / "dvc.lock"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if (root / out["path"]).resolve() == prepared and "md5" in out:
                files = [p for p in prepared.rglob("*") if p.is_file()]
                if out.get("nfiles") == len(files) and out.get("size") == sum(p.stat().st_size for p in files):
                    return out["md5"], "dvc.lock"
    manifest = PrepareConfig(out_dir=prepared).manifest_path
    return hashlib.md5(manifest.read_bytes()).hexdigest(), manifest.name


def split_datasets(manifest: pd.DataFrame, prepared: Path, digest: str) -> dict[str, Dataset]:
    """``lgg-prepared-<part>`` for each split part the manifest has, and ``-all``: the part's rows
    (one a slice), sourced at the prepared folder, digested by DVC's hash of it."""
    parts = {part: manifest[manifest["split"] == part] for part in ("train", "val", "test")} | {"all": manifest}
    with warnings.catch_warnings():  # mlflow 3.17 registers its local source twice and says so; the
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")  # no model input
        return {part: Dataset(**mlflow.data.from_pandas(rows, source=str(Path(prepared).resolve()),
                                                        name=f"{DATASET_NAME}-{part}",
                                                        digest=digest.removesuffix(".dir")).to_dict())
                for part, rows in parts.items() if len(rows)}


def run_datasets(config: PipelineConfig) -> dict[str, Dataset]:
    """``split_datasets`` of the prepared data the config names (its manifest, its DVC hash)."""
    digest, _ = prepared_data_hash(config.prepare.out_dir, repo_root())
    return split_datasets(read_manifest(config.prepare.manifest_path), config.prepare.out_dir, digest)


def log_datasets(run_id: str, datasets: Mapping[str, Dataset], parts: list[str]) -> None:
    """The ``parts`` of ``datasets`` as inputs of run ``run_id``, each with its context (training, ...)."""
    inputs = [DatasetInput(datasets[part], tags=[InputTag("mlflow.data.context", CONTEXTS[part])])
              for part in parts if part in datasets]
    MlflowClient().log_inputs(run_id, datasets=inputs)


def check_store(config: MlflowConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The tracking store answers (a server within seconds) or can be written (a SQLite file); its URI.

    Called before a stage starts its work, so an MLflow server that is down costs one line, not
    minutes of retries after the training.
    """
    from tasks.server import answers

    uri = tracking_uri(config, environ)
    if uri.startswith(("http://", "https://")) and (why := answers(f"{uri.rstrip('/')}/health")):
        raise EnvironmentMismatch(f"the MLflow tracking server {uri} does not answer ({why}): start it (make ui), "
                                  "or unset MLFLOW_TRACKING_URI to use the repository's sqlite store")
    if uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder if folder.exists() else folder.parent, os.W_OK):
            raise EnvironmentMismatch(f"the MLflow store {uri}: {folder} is not writable; set mlflow.tracking_uri")
    return uri


def ui_base(uri: str, environ: Mapping[str, str] = os.environ) -> str:
    """The MLflow UI of the store ``uri``: the tracking server itself, else ``make ui``'s."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else \
        f"http://127.0.0.1:{environ.get('MLFLOW_PORT', '5000')}"


def run_link(experiment_id: str, run_id: str, environ: Mapping[str, str] = os.environ) -> str:
    """A markdown link to the run in the MLflow UI: the tracking server's, else ``make ui``'s."""
    return f"[{run_id[:8]}]({ui_base(mlflow.get_tracking_uri(), environ)}/#/experiments/{experiment_id}/runs/{run_id})"


def experiment_link(config: MlflowConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The experiment's runs table in the MLflow UI, in its model-training view (MLflow 3's home page and
    an experiment without ``workflowType`` open the GenAI one); the UI's home when there is no experiment yet."""
    uri = tracking_uri(config, environ)
    base = ui_base(uri, environ)
    experiment = MlflowClient(uri).get_experiment_by_name(config.experiment)
    if experiment is None:
        return base
    return f"{base}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"

