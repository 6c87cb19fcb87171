"""The ``prepare`` stage: validate the raw tree, preprocess every volume, split by patient."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import prepare as prepare_tasks
from unet.config import PipelineConfig
from unet.prepare.stage import describe


@stage_flow("prepare")
def prepare_flow(config: PipelineConfig) -> dict:
    summary = prepare_tasks.run(config)
    print(describe(summary))
    prepare_tasks.publish_report(config, summary)
    return summary


def run(config: PipelineConfig) -> dict:
    return prepare_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
