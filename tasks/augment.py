"""Tasks of the ``augment`` stage: one a training patient, mapped on the stage's task runner."""

from __future__ import annotations

from typing import Any

from tasks.common import each_task
from tasks.reports import augment_report, figure, publish
from unet.augment import stage
from unet.config import PipelineConfig


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, one ``elastic-<patient>`` task a training patient."""
    return stage.run(config, each=each_task("elastic"))


def publish_report(config: PipelineConfig, summary: dict[str, Any]) -> None:
    """The copies' table and the preview picture (the slices alone when there are no copies)."""
    caption = "Slices, their elastic copies and the warped masks" if summary["copies"] else "Slices and weight maps"
    publish("lgg-augment", augment_report(summary) + figure(config.augment.preview, caption),
            description="elastic copies and the disk they take")
