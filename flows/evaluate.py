"""The ``evaluate`` stage: the reference protocol on the test split (and val), at 256x256."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import evaluate as evaluate_tasks
from tasks.trained import train_record
from unet.config import PipelineConfig
from unet.evaluate import stage


@stage_flow("evaluate")
def evaluate_flow(config: PipelineConfig) -> dict:
    record = train_record(config)  # the train stage's MLflow run and model: the scores go there too
    metrics = stage.evaluate(config, score_part=evaluate_tasks.evaluate_part)
    evaluate_tasks.log_evaluation(config, record, metrics)
    evaluate_tasks.publish_report(config, metrics)
    return metrics


def run(config: PipelineConfig) -> dict:
    return evaluate_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
