"""The ``cv`` stage: one model per patient-level fold, every patient segmented by a model that never
saw it (Buda et al. 2019: 22 folds of 5 patients; ``cv.folds: 0`` switches it off). The folds train
here one after another, or with ``cv.executor: pool`` as flow runs on a Prefect work pool."""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import cv as cv_tasks
from tasks import cv_pool
from unet.config import PipelineConfig
from unet.cv import stage


@stage_flow("cv")
def cv_flow(config: PipelineConfig) -> dict:
    on_pool = cv_pool.executor(config) == "pool"
    metrics = stage.cross_validate(config, cv_pool.on_pool() if on_pool else stage.in_turn(cv_tasks.run_fold),
                                   tracking_store=cv_tasks.tracking_store(config))
    if config.cv.folds:
        registered = cv_tasks.register_ensemble(config, metrics)
        print(f"the {config.cv.folds} fold models as one: {registered['model_name']} version "
              f"{registered['version']}, {registered['decision']}")
    cv_tasks.publish_report(config, metrics)
    return metrics


def run(config: PipelineConfig) -> dict:
    return cv_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
