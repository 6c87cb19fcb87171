"""The ``prepare`` stage: validate the raw tree, preprocess every volume, split by patient."""

from __future__ import annotations

import sys

import pandas as pd

from flows.common import stage_flow, stage_main
from tasks import prepare as prepare_tasks
from unet.config import PipelineConfig


@stage_flow("prepare")
def prepare_flow(config: PipelineConfig) -> pd.DataFrame:
    manifest = prepare_tasks.prepare_dataset(config)
    prepare_tasks.publish_report(manifest)
    return manifest


def run(config: PipelineConfig) -> pd.DataFrame:
    return prepare_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
