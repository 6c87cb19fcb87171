"""Tasks of the ``augment`` stage: one a training patient, mapped on the stage's task runner."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.common import each_task
from tasks.reports import augment_report, figure, publish
from unet.augment import stage
from unet.config import PipelineConfig


def all_patients(config: PipelineConfig) -> dict[str, Any]:
    """The stage, one ``elastic-<patient>`` task a training patient."""
    return stage.run(config, each=each_task("elastic"))


def publish_report(summary: dict[str, Any], image_size: int, preview: Path) -> None:
    """The copies' table and the preview picture (the slices alone when there are no copies)."""
    report = augment_report(summary, image_size)
    caption = "Slices, their elastic copies and the warped masks" if summary["copies"] else "Slices and weight maps"
    report += figure(preview, caption)
    publish("lgg-augment", report, description="elastic copies and the disk they take")
