"""The ``download`` stage: put the raw set at ``data.raw_dir``/kaggle_3m in the Kaggle layout."""

from __future__ import annotations

import sys
from pathlib import Path

from flows.common import stage_flow, stage_main
from tasks import download as download_tasks
from unet.config import PipelineConfig


@stage_flow("download")
def download_flow(config: PipelineConfig) -> Path:
    """Fetch or generate the raw tree as ``data.source`` says; returns the kaggle_3m folder."""
    return download_tasks.fetch(config.data)


def run(config: PipelineConfig) -> Path:
    return download_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
