"""Tasks of the ``prepare`` stage: the patients in ``prepare.workers`` processes inside one task."""

from __future__ import annotations

from typing import Any

from tasks.common import stage_task
from tasks.reports import prepare_report, publish
from unet.config import PipelineConfig
from unet.fanout import in_processes
from unet.prepare import stage


@stage_task(name="prepare-patients")
def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, its per-patient checks and preprocessing in processes, not one Prefect task each: the
    image work holds the GIL (threads do not help), and a process a patient would each start Prefect."""
    with in_processes(config.prepare.workers) as each:
        return stage.run(config, each=each)


def publish_report(config: PipelineConfig, summary: dict[str, Any]) -> None:
    publish("lgg-prepare", prepare_report(summary), description="split sizes by patient")
