"""Tasks of the ``cv`` stage: one a fold (its training and its test patients), and the report."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger

from tasks.common import stage_task
from tasks.reports import cv_report, publish
from unet.config import PipelineConfig
from unet.cv import stage


@stage_task(name="cv-fold", task_run_name="fold-{fold}")
def run_fold(config: PipelineConfig, manifest, fold: int, assignment: dict[str, str]):
    logger = get_run_logger()

    def on_epoch(epoch: int, metrics: dict) -> None:
        logger.info("fold %d, epoch %d: loss %.4f, val DSC %.4f", fold, epoch, metrics["loss"], metrics["val_dsc"])

    return stage.run_fold(config, manifest, fold, assignment, on_epoch)


def publish_report(metrics: dict[str, Any]) -> None:
    publish("lgg-cv", cv_report(metrics), description=f"{metrics['folds']}-fold cross-validation")
