"""Tasks of the ``weightmaps`` stage: one a patient, mapped on the stage's task runner."""

from __future__ import annotations

from typing import Any

from tasks.common import each_task
from tasks.reports import figure, publish, weightmaps_report
from unet.config import PipelineConfig
from unet.weightmaps import stage


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, one ``weight-maps-<patient>`` task a patient."""
    return stage.run(config, each=each_task("weight-maps"))


def publish_report(config: PipelineConfig, summary: dict[str, Any]) -> None:
    caption = "The border term between touching tumour parts, at 256 px"
    publish("lgg-weightmaps", weightmaps_report(summary) + figure(config.weightmaps.figure, caption),
            description="class weights and weight-map figures")
