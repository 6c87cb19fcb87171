"""The ``download`` stage: put the raw set at ``data.raw_dir``/kaggle_3m in the Kaggle layout."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import download as download_tasks
from unet.config import PipelineConfig
from unet.download.stage import describe


@stage_flow("download")
def download_flow(config: PipelineConfig) -> dict:
    """Fetch or generate the raw tree as ``data.source`` says."""
    summary = download_tasks.run(config)
    print(describe(summary))
    download_tasks.publish_report(config, summary)
    return summary


def run(config: PipelineConfig) -> dict:
    return download_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
