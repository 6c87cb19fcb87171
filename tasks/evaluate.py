"""Tasks of the ``evaluate`` stage: score a split part; the figures into the train stage's MLflow run."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from tasks.common import each_task, stage_task
from tasks.reports import evaluate_report, figures, publish
from tasks.tracking import log_datasets, log_metrics, numeric, run_datasets
from tasks.trained import train_record
from unet.config import PipelineConfig
from unet.evaluate import stage


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, one task a split part (``evaluate-test``, ``evaluate-val``) in this thread; the
    scores go into the train stage's MLflow run too."""
    record = train_record(config)  # the run of the model in the workspace: a store without it stops here
    metrics = stage.run(config, each=each_task("evaluate", in_turn=True))
    log_evaluation(config, record, metrics)
    return metrics


def evaluation_metrics(evaluation: Mapping[str, Any]) -> dict[str, float]:
    """eval.json flattened: the headline split's numbers as ``test_*`` (or ``val_*``), parts by name."""
    headline = evaluation.get("split", "test")
    flat = {f"{headline}_{k}": v for k, v in numeric(evaluation).items()}
    for part, values in evaluation.items():
        if isinstance(values, Mapping):
            flat.update({f"{part}_{k}": v for k, v in numeric(values).items()})
    return flat


@stage_task(name="log-evaluation")
def log_evaluation(config: PipelineConfig, record: Mapping[str, Any], evaluation: Mapping[str, Any]) -> None:
    """The evaluate stage's scores and pictures into the train run (its metrics, files and overlays);
    the scores also on the run's logged model, so its page shows what the registry decides on, each
    score naming the split part's dataset it was measured on."""
    client, run_id, ev = MlflowClient(), record["run_id"], config.evaluate
    datasets = run_datasets(config)
    log_datasets(run_id, datasets, evaluated_parts(evaluation))
    log_metrics(run_id, evaluation_metrics(evaluation), model_id=record.get("model_id"), datasets=datasets)
    client.set_tag(run_id, "evaluate.split", str(evaluation.get("split")))
    client.set_tag(run_id, "evaluate.tta", str(evaluation.get("tta")).lower())
    for path in (ev.metrics_path, ev.per_patient_path):
        client.log_artifact(run_id, str(path), "evaluate")
    if Path(ev.overlays_dir).is_dir():
        client.log_artifacts(run_id, str(ev.overlays_dir), "evaluate/overlays")


def evaluated_parts(evaluation: Mapping[str, Any]) -> list[str]:
    """The split parts ``eval.json`` scores: the headline one, then those nested under their names."""
    return [evaluation.get("split", "test"), *(k for k, v in evaluation.items() if isinstance(v, Mapping))]


def publish_report(config: PipelineConfig, metrics: Mapping[str, Any]) -> None:
    """The scores, the per-patient plot and the overlays (best, median and worst patient) in one report."""
    ev = config.evaluate
    overlays = sorted(Path(ev.overlays_dir).glob("*.png")) if Path(ev.overlays_dir).is_dir() else []
    pictures = [(ev.per_patient_figure, "DSC per patient volume; lines: mean and median of the test patients"),
                *((path, f"{path.stem}: prediction outlined red, ground truth green") for path in overlays)]
    publish("lgg-evaluate", evaluate_report(metrics) + figures(pictures),
            description=f"{metrics['split']} scores at the original geometry")
