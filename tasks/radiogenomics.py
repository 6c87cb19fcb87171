"""Tasks of the ``radiogenomics`` stage: the study's table as a Prefect artifact and an MLflow run."""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient

from tasks.common import each_task, stage_task
from tasks.radiogenomics_report import radiogenomics_report
from tasks.reports import figure, publish
from tasks.tracking import log_metrics, use_experiment, write_run_file
from unet.config import PipelineConfig
from unet.radiogenomics import stage


@stage_task(name="log-radiogenomics")
def log_study(config: PipelineConfig, result: dict[str, Any]) -> str:
    """One MLflow run (tag stage=radiogenomics): every test's p-value as a metric, the files; then the
    stage's receipt (``radiogenomics.receipt_path``)."""
    experiment_id = use_experiment(config.mlflow)
    client = MlflowClient()
    run = client.create_run(experiment_id, run_name="radiogenomics",
                            tags={"stage": "radiogenomics", "mlflow.note.content":
                                  "Buda et al. 2019 on this pipeline: shape features x genomic clusters"})
    run_id = run.info.run_id
    log_metrics(run_id, {f"p_{t['masks']}_{t['feature']}_{t['variable']}": t["p"] for t in result["tests"]})
    rg = config.radiogenomics
    for path in (rg.metrics_path, rg.features_path, rg.figure):
        if path.is_file():
            client.log_artifact(run_id, str(path), "radiogenomics")
    client.set_terminated(run_id)
    # the same bytes each time: what was logged, not its id
    write_run_file(rg.receipt_path, {"experiment": config.mlflow.experiment, "tests": len(result["tests"])})
    return run_id


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, one task a kind of masks (``features-manual``, ``features-automatic``), then its MLflow run."""
    result = stage.run(config, each=each_task("features"))
    log_study(config, result)
    return result


def publish_report(config: PipelineConfig, result: dict[str, Any]) -> None:
    report = radiogenomics_report(result) + figure(config.radiogenomics.figure,
                                                   "-log10 p of every test, features x clusters")
    publish("lgg-radiogenomics", report, description="shape features x genomic clusters")


