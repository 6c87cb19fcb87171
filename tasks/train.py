"""Tasks of the ``train`` stage: the MLflow run around the training, its data, per-epoch reports.

One MLflow run per training: params (every knob of params.yaml), git and data-hash tags, the
prepared manifest as its dataset, per-epoch metrics, system metrics, the augment picture, and
the best model as a pyfunc. The run starts and ends in the flow's own thread, as MLflow's active
run requires; everything else names the run id explicitly.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from prefect import get_run_logger

from tasks import mlflow_model
from tasks.common import each_task, stage_task
from tasks.reports import figure, publish, train_report
from tasks.tracking import (
    log_datasets,
    log_metrics,
    prepared_data_hash,
    repo_root,
    run_datasets,
    run_link,
    split_datasets,
    use_experiment,
    write_run_file,
)
from tasks.trained import tag_trained_weights
from unet.config import PipelineConfig
from unet.errors import UserError
from unet.io.layout import read_manifest
from unet.train import stage
from unet.train.stage import load_training_data

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


@stage_task(name="load-training-data")
def load_data(config: PipelineConfig):
    return load_training_data(config)


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


def _run_to_resume(path: Path, experiment_id: str) -> tuple[str | None, str | None]:
    """(the run to go on in, the finished run a new one follows) for the run ``path`` names.

    A killed training goes on in its own run; a finished run (perhaps a registered model's) is never
    reopened: the resumed training gets a new run tagged ``resumed_from``.
    """
    if not path.is_file():
        return None, None
    run_id = json.loads(path.read_text())["run_id"]
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException:
        return None, None
    if run.info.experiment_id != experiment_id or run.info.lifecycle_stage != "active":
        return None, None
    return (None, run_id) if run.info.status == "FINISHED" else (run_id, None)


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

    The run id is written to ``mlflow_run.json`` (beside the checkpoints, kept by neither DVC nor git)
    at once, so a training resumed after a kill (``resume``: a checkpoint is continued) goes on in the
    same run. The run starts and ends in the
    calling thread, as MLflow's active run requires.
    """
    manifest = read_manifest(config.prepare.manifest_path)  # a clear error before any run is opened
    root = repo_root()
    digest, digest_source = prepared_data_hash(config.prepare.out_dir, root)
    experiment_id = use_experiment(config.mlflow, environ)
    client = MlflowClient()
    resumed, follows = _run_to_resume(config.train.run_path, experiment_id) if resume else (None, None)
    run = mlflow.start_run(run_id=resumed, experiment_id=experiment_id, log_system_metrics=True,
                           run_name=None if resumed else run_name(config, environ), description=description(config))
    run_id = run.info.run_id
    try:
        write_run_file(config.train.run_path, {"run_id": run_id, "experiment_id": experiment_id,
                                               "experiment": config.mlflow.experiment})
        _log_params(client, run_id, param_values(config))
        tags = {"stage": "train", "data.digest": digest, "data.digest_source": digest_source,
                "mlflow.source.git.commit": git_commit(root), "dvc.exp_name": environ.get("DVC_EXP_NAME"),
                "resumed_from": follows}
        for key, value in tags.items():
            if value:
                client.set_tag(run_id, key, value)
        log_datasets(run_id, split_datasets(manifest, config.prepare.out_dir, digest), ["train", "val"])
        yield run_id
    except BaseException:
        _end_run(run_id, "FAILED")
        raise
    _end_run(run_id, "FINISHED")


def _end_run(run_id: str, status: str) -> None:
    """End the active run; when the store is gone the run stays RUNNING there (a resume finishes it)
    and the stage's own error is what the user sees, not the failed status update."""
    from mlflow.tracking import fluent

    try:
        mlflow.end_run(status)  # pops the run, then tells the store
    except (MlflowException, OSError):
        if store_answers():
            raise
        monitor = fluent.run_id_to_system_metrics_monitor.pop(run_id, None)  # MLflow would stop it after
        if monitor is not None:
            monitor.finish()

def run_name(config: PipelineConfig, environ: Mapping[str, str] = os.environ) -> str:
    """The DVC experiment's name when DVC runs one, else what was trained: ``reference-64px-8ep``."""
    return environ.get("DVC_EXP_NAME") or (f"{config.model.variant}-{config.prepare.image_size}px-"
                                           f"{config.train.epochs}ep")


def description(config: PipelineConfig) -> str:
    t = config.train
    return (f"train stage: {config.model.variant} U-Net at {config.prepare.image_size} px, {t.epochs} epochs, "
            f"{t.optimizer} lr {t.lr:g}, batch {t.batch_size}, data.source {config.data.source}; the best epoch's "
            "model is logged and, after evaluate, registered by the register stage")


EPOCH_PREFIX = "epoch_"  # MLflow's name for the training's validation curve (the network's grid, each epoch)


def mlflow_names(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The training's figures as the run shows them: its validation (``val_dsc``, ... at the network's grid,
    ``best_val_dsc`` the shipped epoch's) as ``epoch_val_*``, so that ``val_*`` in a run is only the evaluate
    stage's per-volume figures at the original grid, the headline the registry decides on, and a curve and
    a headline never share a name (the history file and train.json keep the plain names)."""
    renamed = {"best_val_dsc": f"{EPOCH_PREFIX}val_dsc_shipped"}
    return {renamed.get(k, f"{EPOCH_PREFIX}{k}" if k.startswith("val_") else k): v for k, v in metrics.items()}


def log_epoch(run_id: str, epoch: int, metrics: Mapping[str, Any]) -> None:
    """One epoch's loss, epoch_val_dsc, ... with ``step=epoch`` (called from the trainer's on_epoch)."""
    log_metrics(run_id, mlflow_names({k: v for k, v in metrics.items() if k != "epoch"}), step=epoch)


class EpochReporter:
    """What the trainer calls after each epoch: one log line in Prefect, the metrics into MLflow.

    An MLflow server that goes away does not stop the training: the epochs it could not take are
    kept and sent with the next epoch that gets through (``flush`` at the end tries once more);
    ``metrics/train_history.csv`` holds every epoch whatever happens.
    """

    def __init__(self, run_id: str, epochs: int) -> None:
        from prefect.artifacts import create_progress_artifact

        self.run_id, self.epochs = run_id, epochs
        self.pending: list[tuple[int, dict]] = []
        self.speeds: dict[int, float] = {}  # images/s an epoch of this process (no file keeps them)
        self.logger = get_run_logger()
        # the run's progress bar in the Prefect UI while the training runs
        self.progress = create_progress_artifact(0.0, key="lgg-train-progress", description="epochs done")

    def __call__(self, epoch: int, metrics: dict) -> None:
        from prefect.artifacts import update_progress_artifact

        self.logger.info("epoch %d/%d: loss %.4f, val DSC %.4f (median %.4f), %.1f img/s", epoch, self.epochs,
                         metrics["loss"], metrics["val_dsc"], metrics["val_dsc_median"], metrics["images_per_s"])
        update_progress_artifact(self.progress, 100.0 * epoch / self.epochs)
        self.speeds[epoch] = metrics["images_per_s"]
        self.pending.append((epoch, dict(metrics)))
        self.flush()

    def flush(self) -> bool:
        """Send what is pending; False (and a warning) when the server does not take it."""
        try:
            while self.pending:
                log_epoch(self.run_id, *self.pending[0])
                self.pending.pop(0)
        except (MlflowException, OSError) as exc:  # requests' errors are OSErrors
            self.logger.warning("MLflow did not take epoch %d (%s); training goes on, it is kept and sent "
                                "later", self.pending[0][0], str(exc).splitlines()[0][:200])
            return False
        return True


    def backfill(self, history: list[dict]) -> None:
        """The epochs of a resumed training's ``history`` (the checkpoint's) that the run lacks: an
        MLflow outage lost them with the process that trained them. Queued first, then sent."""
        logged = {m.step for m in MlflowClient().get_metric_history(self.run_id, "loss")}
        missing = [(h["epoch"], {k: v for k, v in h.items() if k != "epoch"}) for h in history
                   if h["epoch"] not in logged]
        if missing:
            self.logger.info("sending epoch(s) %s of the resumed training, which run %s lacks",
                             ", ".join(str(e) for e, _ in missing), self.run_id)
            self.pending[:0] = missing
            self.flush()


def epoch_reporter(run_id: str, epochs: int, resumed: Mapping[str, Any] | None = None) -> EpochReporter:
    """The trainer's reporter; for a ``resumed`` checkpoint, the epochs before it that the run lacks
    are sent first."""
    reporter = EpochReporter(run_id, epochs)
    if resumed is not None:
        reporter.backfill(list(resumed.get("history", [])))
    return reporter


def store_answers() -> bool:
    """Whether the tracking store MLflow points at answers now (a SQLite file always does)."""
    from tasks.server import answers

    uri = mlflow.get_tracking_uri()
    return not uri.startswith(("http://", "https://")) or answers(f"{uri.rstrip('/')}/health") is None


class TrackingLost(UserError, RuntimeError):
    """The training finished, but the MLflow store went away before it took the results."""


def finish_run(run_id: str, config: PipelineConfig, summary: Mapping[str, Any], reporter: EpochReporter) -> str:
    """The epochs still pending, the summary and the model into the run; returns the model's URI.

    When the store is still gone, one message says where the results are and how to log them.
    """
    try:
        if not reporter.flush():
            raise MlflowException(f"{len(reporter.pending)} epoch(s) could not be sent")
        model = log_trained_model(run_id, config)  # first: the summary then goes onto it with its datasets
        log_training_summary(run_id, config, summary, model["model_id"])
        tag_trained_weights(run_id, config.train.best_path, model)  # last: evaluate and register find it so
        write_run_file(config.train.run_path, {**model, "images_per_s": summary.get("images_per_s")})
        return model["model_uri"]
    except (MlflowException, OSError) as exc:
        if store_answers():
            raise  # the store is there: this is not an outage but a fault to see whole
        raise TrackingLost(
            f"the training finished ({config.train.best_path}, {config.train.history_path}) but the MLflow store "
            f"{mlflow.get_tracking_uri()} did not take run {run_id} ({str(exc).splitlines()[0][:200]}); when it "
            "answers again, log it with train.resume: true (set it in params.yaml and run dvc repro train, or "
            "dvc exp run -S train.resume=true train): the finished checkpoint is continued for no epoch, the "
            "epochs the run lacks are sent and the run completed"
        ) from None


@stage_task(name="log-training-summary")
def log_training_summary(run_id: str, config: PipelineConfig, summary: Mapping[str, Any],
                         model_id: str | None = None) -> None:
    """Best score and throughput, the device used, the augment picture and the train metric files;
    the figures also on the logged model ``model_id``, ``epoch_val_dsc_shipped`` naming the validation data."""
    client = MlflowClient()
    # the summary's mean speed under its own name: ``images_per_s`` is the per-epoch curve
    figures = mlflow_names({("mean_images_per_s" if k == "images_per_s" else k): v for k, v in summary.items()})
    log_metrics(run_id, figures, model_id=model_id, datasets=run_datasets(config))
    client.set_tag(run_id, "train.device_used", str(summary.get("device")))
    if Path(config.augment.preview).is_file():
        client.log_artifact(run_id, str(config.augment.preview), "figures")
    for path in (config.train.metrics_path, config.train.history_path):
        if path.is_file():
            client.log_artifact(run_id, str(path), "metrics")


@stage_task(name="log-model")
def log_trained_model(run_id: str, config: PipelineConfig) -> dict[str, Any]:
    """``best.pt`` as the run's pyfunc model, with 4 raw slices as its input example; returns the run
    record with its ``model_id`` and ``model_uri``.

    The model is added to ``mlflow_run.json``; evaluate and register find it by the run's tags.
    """
    manifest = read_manifest(config.prepare.manifest_path)
    name = f"{config.model.variant}-unet-{run_id[:8]}"  # the logged model's name: variant and run
    info = mlflow_model.log_model(run_id, config.train.best_path, mlflow_model.example_slices(manifest), name)
    record = {**json.loads(config.train.run_path.read_text()), "model_id": info.model_id, "model_uri": info.model_uri}
    write_run_file(config.train.run_path, record)
    return record


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage inside one MLflow run (the task ``train-seed-<n>``, in this thread): params, tags,
    dataset, per-epoch metrics, then the model. The summary gains the run (``run_id``, ``model_uri``)
    and each epoch's speed (``speeds``), which ``train.json`` leaves out."""
    state = stage.resume_state(config)  # a bad checkpoint stops here, before any MLflow run is touched
    with train_run(config, resume=state is not None) as run_id:
        reporter = epoch_reporter(run_id, config.train.epochs, resumed=state)
        summary = stage.run(config, each=each_task("train", in_turn=True), on_epoch=reporter, load_data=load_data,
                            state=state)
        model_uri = finish_run(run_id, config, summary, reporter)
    return {**summary, "run_id": run_id, "model_uri": model_uri, "speeds": dict(reporter.speeds)}


def publish_report(config: PipelineConfig, summary: Mapping[str, Any]) -> None:
    """The training curve as a Prefect artifact (the history file includes epochs from before a resume),
    with the speeds of the epochs this process trained and a link to the MLflow run."""
    speeds = summary.get("speeds") or {}
    history = [{**h, "images_per_s": speeds.get(h["epoch"])}
               for h in pd.read_csv(config.train.history_path).to_dict("records")]
    run = MlflowClient().get_run(summary["run_id"])
    report = (train_report(history, summary) + figure(config.train.curve_path, "Loss and validation DSC by epoch")
              + f"\nMLflow run: {run_link(run.info.experiment_id, summary['run_id'])}\n")
    publish("lgg-train", report, description="training curve and best epoch")
