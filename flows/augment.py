"""The ``augment`` stage: elastic copies of every training slice, and a picture to check them."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import augment as augment_tasks
from tasks.common import task_runner
from unet.augment.stage import describe
from unet.config import PipelineConfig
from unet.device import share_threads


@stage_flow("augment")
def augment_flow(config: PipelineConfig) -> dict:
    summary = augment_tasks.run(config)
    print(describe(summary))
    augment_tasks.publish_report(config, summary)
    return summary


def run(config: PipelineConfig) -> dict:
    params = config.augment
    share_threads(params.workers)  # each worker thread warps one patient
    runner = task_runner(params.task_runner, params.workers, "augment.task_runner")
    return augment_flow.with_options(task_runner=runner)(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
