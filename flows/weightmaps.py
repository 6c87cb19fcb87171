"""The ``weightmaps`` stage: the U-Net paper's weight map for every prepared slice."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import weightmaps as weightmap_tasks
from tasks.common import task_runner
from unet.config import PipelineConfig
from unet.weightmaps.stage import describe


@stage_flow("weightmaps")
def weightmaps_flow(config: PipelineConfig) -> dict:
    summary = weightmap_tasks.run(config)
    print(describe(summary))
    weightmap_tasks.publish_report(config, summary)
    return summary


def run(config: PipelineConfig) -> dict:
    params = config.weightmaps
    runner = task_runner(params.task_runner, params.workers, "weightmaps.task_runner")
    return weightmaps_flow.with_options(task_runner=runner)(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
