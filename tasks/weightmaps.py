"""Tasks of the ``weightmaps`` stage: one a patient, mapped on the stage's task runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.common import each_task
from tasks.reports import figure, publish, weightmaps_report
from unet.config import PipelineConfig
from unet.weightmaps import stage


def all_patients(config: PipelineConfig) -> dict[str, Any]:
    """The stage, one ``weight-maps-<patient>`` task a patient."""
    return stage.run(config, each=each_task("weight-maps"))


def publish_report(summary: dict[str, Any], picture: Path) -> None:
    report = weightmaps_report(summary) + figure(picture, "The border term between touching tumour parts, at 256 px")
    publish("lgg-weightmaps", report, description="class weights and weight-map figures")
