"""Tasks of the ``prepare`` stage."""

from __future__ import annotations

import pandas as pd

from tasks.common import stage_task
from tasks.reports import prepare_report, publish
from unet.config import PipelineConfig
from unet.prepare import stage


@stage_task(name="prepare-dataset")
def prepare_dataset(config: PipelineConfig) -> pd.DataFrame:
    """Validate the raw tree, then preprocess every patient in ``prepare.workers`` processes."""
    return stage.prepare_in_processes(config.data.raw_root, config.prepare)


def publish_report(manifest: pd.DataFrame) -> None:
    publish("lgg-prepare", prepare_report(stage.summarise(manifest)), description="split sizes by patient")
