"""The ``train`` stage: fit the U-Net on the prepared slices, weight maps and elastic copies.

Runs on a GPU when there is one (``train.device: auto``). Under ``torchrun --nproc_per_node=N
-m flows.train`` every process trains a DistributedDataParallel replica on its own draws; rank 0
runs this flow (one MLflow run), the others call ``unet.train.stage.run`` directly.
"""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import train as train_tasks
from unet.config import PipelineConfig
from unet.train import distributed, stage


@stage_flow("train")
def train_flow(config: PipelineConfig) -> dict:
    summary = train_tasks.run(config)
    print(f"{stage.describe(summary)}; MLflow run {summary['run_id']}, model {summary['model_uri']}")
    train_tasks.publish_report(config, summary)
    return summary


def run(config: PipelineConfig) -> dict:
    return train_flow(config) if distributed.rank() == 0 else stage.run(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
