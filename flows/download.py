"""The ``download`` stage: put the raw set at ``data.raw_dir``/kaggle_3m in the Kaggle layout."""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows.common import stage_main
from tasks import data as data_tasks
from unet.config import DataConfig, PipelineConfig


@flow(name="download", log_prints=True)
def download_flow(config: DataConfig) -> Path:
    """Fetch or generate the raw tree as ``config.source`` says; returns the kaggle_3m folder."""
    if config.source == "kaggle":
        return data_tasks.download_kaggle(config.kaggle_dataset, config.raw_dir)
    if config.source == "archive":
        return data_tasks.extract_archive(config.path, config.raw_dir)
    if config.source == "local":
        return data_tasks.use_local(config.path, config.raw_dir, config.copy_local)
    return data_tasks.generate_synthetic(config)


def run(config: PipelineConfig) -> Path:
    return download_flow(config.data)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
