"""MLflow tracking of the train and evaluate stages: one run per training, found again by id.

Where runs go: ``MLFLOW_TRACKING_URI`` if set, else ``mlflow.tracking_uri`` from params.yaml, else
``sqlite:///<repo>/mlflow.db`` with artifacts in ``<repo>/mlartifacts/``. ``<repo>`` is the folder
holding dvc.yaml; under ``dvc exp run --temp/--queue`` DVC's ``DVC_ROOT`` names the real repository,
so runs never land in a temporary copy that is deleted afterwards.

MLflow's active run is per thread and Prefect may run tasks in worker threads, so everything here
logs through ``MlflowClient`` with the run id passed in. Only ``train_run`` uses the active run: it
opens it in the flow's own thread (for MLflow's system-metrics monitor) and logs the dataset to it
there. The run id goes to a small file beside the train metrics (``mlflow_run.json``) that the
evaluate and register stages read.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import mlflow_model
from unet.io.atomic import atomic_file
from unet.config import MlflowConfig, PipelineConfig
from unet.prepare.stage import read_manifest
from unet.train.loop import BEST

RUN_FILE = "mlflow_run.json"  # beside train.json; dvc.yaml names the same file
DATASET_NAME = "lgg-prepared"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


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


def use_store(config: MlflowConfig, environ: Mapping[str, str] = os.environ) -> str:
    """Point MLflow (this process) at the tracking store; return its URI."""
    uri = tracking_uri(config, environ)
    mlflow.set_tracking_uri(uri)
    return uri


def use_experiment(config: MlflowConfig, environ: Mapping[str, str] = os.environ) -> str:
    """Point MLflow at the store and return the experiment id, creating the experiment if needed."""
    uri = use_store(config, environ)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return client.create_experiment(config.experiment, artifact_location=artifact_location(uri, config.experiment))
    if experiment.lifecycle_stage != "active":
        raise ValueError(
            f"MLflow experiment {config.experiment!r} in {uri} is deleted: restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or set mlflow.experiment "
            "in params.yaml to another name"
        )
    return experiment.experiment_id


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` -> ``{"train.lr": 1e-3}``."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        flat.update(flatten(value, f"{name}.") if isinstance(value, Mapping) else {name: value})
    return flat


def param_values(config: PipelineConfig) -> dict[str, str]:
    """Every knob of params.yaml as MLflow params: dotted keys, JSON-spelt values, at most 6000 chars."""
    flat = flatten(config.model_dump(mode="json"))
    return {k: (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM_CHARS] for k, v in flat.items()}


def git_commit(cwd: Path) -> str | None:
    """``git rev-parse HEAD`` in ``cwd``; None outside a git repository or without git."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


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
    manifest = prepared / "manifest.parquet"
    return hashlib.md5(manifest.read_bytes()).hexdigest(), "manifest.parquet"


def log_training_data(manifest: pd.DataFrame, prepared: Path, digest: str) -> None:
    """The manifest (one row a slice) as the active run's training dataset, hashed as DVC knows the data."""
    with warnings.catch_warnings():  # mlflow 3.17 registers its local source twice and says so; the
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")  # no model input
        dataset = mlflow.data.from_pandas(manifest, source=str(Path(prepared).resolve()), name=DATASET_NAME,
                                          digest=digest.removesuffix(".dir"))
        mlflow.log_input(dataset, context="training")


def run_file(config: PipelineConfig) -> Path:
    return config.train.metrics_dir / RUN_FILE


def write_run_file(path: Path, record: dict[str, Any]) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(record, handle, indent=2)


def read_run_file(path: Path) -> dict[str, Any]:
    """The train stage's run record (run_id, model_uri, ...); a clear error when there is none or its
    run is not in the store MLflow points at."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no MLflow run recorded; run the train stage first (dvc repro train)")
    record = json.loads(Path(path).read_text())
    try:
        MlflowClient().get_run(record["run_id"])
    except MlflowException:
        raise ValueError(
            f"{path} names MLflow run {record['run_id']}, which {mlflow.get_tracking_uri()} does not hold: set "
            "MLFLOW_TRACKING_URI to the store the train stage used, or retrain (dvc repro -f train)"
        ) from None
    return record


def train_record(config: PipelineConfig, environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """The train stage's run record, with MLflow pointed at the store that holds the run."""
    use_store(config.mlflow, environ)
    return read_run_file(run_file(config))


def _run_to_resume(path: Path, experiment_id: str) -> str | None:
    """The run ``path`` names, if the store holds it in this experiment (a killed training goes on in it)."""
    if not path.is_file():
        return None
    run_id = json.loads(path.read_text())["run_id"]
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active" else None


def _log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Params once; on a resumed run the new keys, and changed values (epochs, resume) as ``resume.*`` tags."""
    logged = client.get_run(run_id).data.params
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items() if k not in logged],
                     tags=[RunTag(f"resume.{k}", v) for k, v in params.items()
                           if k in logged and logged[k] != v])


@contextmanager
def train_run(config: PipelineConfig, *, resume: bool = False,
              environ: Mapping[str, str] = os.environ) -> Iterator[str]:
    """Open the train stage's run (system metrics on) and log params, tags and the dataset; yield its id.

    The run id is written to ``mlflow_run.json`` at once, so a training resumed after a kill
    (``resume``: a checkpoint is continued) goes on in the same run. The run starts and ends in the
    calling thread, as MLflow's active run requires.
    """
    manifest = read_manifest(config.prepare.manifest_path)  # a clear error before any run is opened
    root = repo_root()
    digest, digest_source = prepared_data_hash(config.prepare.out_dir, root)
    experiment_id = use_experiment(config.mlflow, environ)
    client = MlflowClient()
    resumed = _run_to_resume(run_file(config), experiment_id) if resume else None
    with mlflow.start_run(run_id=resumed, experiment_id=experiment_id, log_system_metrics=True) as run:
        run_id = run.info.run_id
        write_run_file(run_file(config), {"run_id": run_id, "experiment_id": experiment_id,
                                          "experiment": config.mlflow.experiment})
        _log_params(client, run_id, param_values(config))
        tags = {"stage": "train", "data.digest": digest, "data.digest_source": digest_source,
                "mlflow.source.git.commit": git_commit(root), "dvc.exp_name": environ.get("DVC_EXP_NAME")}
        for key, value in tags.items():
            if value:
                client.set_tag(run_id, key, value)
        # mlflow.log_input logs to this thread's active run: the one just opened here
        log_training_data(manifest, config.prepare.out_dir, digest)
        yield run_id


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries MLflow can chart: numbers (bools and strings left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}


def log_metrics(run_id: str, metrics: Mapping[str, Any], step: int = 0) -> None:
    """Numeric entries of ``metrics`` at ``step``, to the run named (never the thread's active run)."""
    now = int(time.time() * 1000)
    MlflowClient().log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in numeric(metrics).items()])


def log_epoch(run_id: str, epoch: int, metrics: Mapping[str, Any]) -> None:
    """One epoch's loss, val_dsc, ... with ``step=epoch`` (called from the trainer's on_epoch)."""
    log_metrics(run_id, {k: v for k, v in metrics.items() if k != "epoch"}, step=epoch)


@task(name="log-training-summary", cache_policy=NO_CACHE, persist_result=False)
def log_training_summary(run_id: str, config: PipelineConfig, summary: Mapping[str, Any]) -> None:
    """Best score and throughput, the device used, the augment picture and the train metric files."""
    client = MlflowClient()
    log_metrics(run_id, summary)
    client.set_tag(run_id, "train.device_used", str(summary.get("device")))
    if Path(config.augment.preview).is_file():
        client.log_artifact(run_id, str(config.augment.preview), "figures")
    for name in ("train.json", "train_history.csv"):
        if (config.train.metrics_dir / name).is_file():
            client.log_artifact(run_id, str(config.train.metrics_dir / name), "metrics")


@task(name="log-model", cache_policy=NO_CACHE, persist_result=False)
def log_trained_model(run_id: str, config: PipelineConfig) -> str:
    """``best.pt`` as the run's pyfunc model, with 4 raw slices as its input example; returns its URI.

    The URI is added to ``mlflow_run.json`` for the register stage.
    """
    manifest = read_manifest(config.prepare.manifest_path)
    info = mlflow_model.log_model(run_id, config.train.out_dir / BEST, mlflow_model.example_slices(manifest))
    record = {**json.loads(run_file(config).read_text()), "model_id": info.model_id, "model_uri": info.model_uri}
    write_run_file(run_file(config), record)
    return info.model_uri


def evaluation_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """eval.json flattened: the headline split's numbers as ``test_*`` (or ``val_*``), parts by name."""
    headline = evaluation.get("split", "test")
    flat = {f"{headline}_{k}": v for k, v in numeric(evaluation).items()}
    for part, values in evaluation.items():
        if isinstance(values, Mapping):
            flat.update({f"{part}_{k}": v for k, v in numeric(values).items()})
    return flat


@task(name="log-evaluation", cache_policy=NO_CACHE, persist_result=False)
def log_evaluation(run_id: str, evaluation: Mapping[str, Any], files: list[Path], overlays_dir: Path) -> None:
    """The evaluate stage's scores and pictures into the train run (its metrics, files and overlays)."""
    client = MlflowClient()
    log_metrics(run_id, evaluation_metrics(evaluation))
    client.set_tag(run_id, "evaluate.split", str(evaluation.get("split")))
    client.set_tag(run_id, "evaluate.tta", str(evaluation.get("tta")).lower())
    for path in files:
        client.log_artifact(run_id, str(path), "evaluate")
    if Path(overlays_dir).is_dir():
        client.log_artifacts(run_id, str(overlays_dir), "evaluate/overlays")
