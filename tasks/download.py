"""Tasks of the ``download`` stage: the source as one task, retried only for network faults."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from tasks.common import each_task
from tasks.reports import download_report, publish
from unet.config import PipelineConfig
from unet.download import sources, stage


def _network_fault(task, task_run, state) -> bool:
    """Retry only what a retry can fix: network and server faults, not credentials or bad files."""
    return isinstance(state.result(raise_on_failure=False), sources.DownloadError)


def run(config: PipelineConfig) -> dict[str, Any]:
    """The stage, its source as the task ``download-<source>``, in the flow's thread (where the timeout
    can interrupt it)."""
    each = each_task("download", in_turn=True, retries=4, retry_delay_seconds=exponential_backoff(backoff_factor=5),
                     retry_jitter_factor=0.5, retry_condition_fn=_network_fault,
                     timeout_seconds=3 * 3600)  # Kaggle's client has no timeout of its own on its first request
    return stage.run(config, each=each)


def publish_report(config: PipelineConfig, summary: dict[str, Any]) -> None:
    publish("lgg-download", download_report(summary), description=f"the raw set from {summary['source']}")
