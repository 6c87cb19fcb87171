"""The ``evaluate`` stage: the reference protocol on the test split (and val), at 256x256."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import evaluate as evaluate_tasks
from unet.config import PipelineConfig
from unet.evaluate.stage import describe


@stage_flow("evaluate")
def evaluate_flow(config: PipelineConfig) -> dict:
    metrics = evaluate_tasks.run(config)
    print(describe(metrics))
    evaluate_tasks.publish_report(config, metrics)
    return metrics


def run(config: PipelineConfig) -> dict:
    return evaluate_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
