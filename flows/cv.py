"""The ``cv`` stage: one model per patient-level fold, every patient segmented by a model that never
saw it (Buda et al. 2019: 22 folds of 5 patients; ``cv.folds: 0`` switches it off). The folds train
here one after another, or with ``cv.executor: pool`` as flow runs on a Prefect work pool."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import cv as cv_tasks
from unet.config import PipelineConfig
from unet.cv.stage import describe


@stage_flow("cv")
def cv_flow(config: PipelineConfig) -> dict:
    metrics = cv_tasks.run(config)
    print(describe(metrics))
    if registered := metrics.get("registered"):
        print(f"the {config.cv.folds} fold models as one: {registered['model_name']} version "
              f"{registered['version']}, {registered['decision']}")
    cv_tasks.publish_report(config, metrics)
    return metrics


def run(config: PipelineConfig) -> dict:
    return cv_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
