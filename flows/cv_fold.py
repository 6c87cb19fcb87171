"""One cross-validation fold as a flow run on a Prefect work pool: what a pool's worker runs when the
cv stage has ``cv.executor: pool`` (``tasks.cv_pool``; deployed by ``python -m flows.cluster deploy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run

from flows.common import stage_flow
from tasks import cv_pool

REPO = Path(__file__).resolve().parents[1]


@stage_flow("cv-fold")
def fold_flow(workdir: str, config: dict[str, Any], fold: int, key: str) -> dict[str, Any]:
    logger = get_run_logger()

    def on_epoch(epoch: int, metrics: dict) -> None:
        logger.info("fold %d, epoch %d: loss %.4f, val DSC %.4f", fold, epoch, metrics["loss"], metrics["val_dsc"])

    return cv_pool.train_fold(REPO, workdir, config, fold, key, str(flow_run.id), on_epoch)
