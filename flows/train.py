"""The ``train`` stage: fit the U-Net on the prepared slices, weight maps and elastic copies.

Runs on a GPU when there is one (``train.device: auto``). Under ``torchrun --nproc_per_node=N
-m flows.train`` every process trains a DistributedDataParallel replica on its own draws; rank 0
runs this flow (one MLflow run), the others call ``unet.train.stage.train`` directly.
"""

from __future__ import annotations

import sys

from flows.common import stage_flow, stage_main
from tasks import train as train_tasks
from unet.config import PipelineConfig
from unet.train import distributed, stage


@stage_flow("train")
def train_flow(config: PipelineConfig) -> dict:
    """The training inside one MLflow run: params, tags, dataset, per-epoch metrics, then the model."""
    state = stage.resume_state(config)  # a bad checkpoint stops here, before any MLflow run is touched
    with train_tasks.train_run(config, resume=state is not None) as run_id:
        reporter = train_tasks.epoch_reporter(run_id, config.train.epochs, resumed=state)
        summary = stage.train(config, reporter, load_data=train_tasks.load_data, state=state)
        model_uri = train_tasks.finish_run(run_id, config, summary, reporter)
        print(f"best val DSC {summary['best_val_dsc']:.4f} at epoch {summary['best_epoch']}; MLflow run {run_id}, "
              f"model {model_uri}")
    train_tasks.publish_report(config, summary, run_id, reporter.speeds)
    return summary


def run(config: PipelineConfig) -> dict:
    return train_flow(config) if distributed.rank() == 0 else stage.train(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
