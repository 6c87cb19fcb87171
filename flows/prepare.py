"""The ``prepare`` stage: validate the raw tree, preprocess every volume, split by patient."""

from __future__ import annotations

import sys

import pandas as pd
from prefect import flow

from flows.common import stage_main, process_map
from tasks import data as data_tasks
from tasks.reports import prepare_report, publish
from unet.config import PipelineConfig
from unet.prepare.stage import summarise


@flow(name="prepare", log_prints=True)
def prepare_flow(config: PipelineConfig) -> pd.DataFrame:
    with process_map(config.prepare.workers) as map_fn:
        manifest = data_tasks.prepare_dataset(config.data.raw_root, config.prepare, map_fn=map_fn)
    publish("lgg-prepare", prepare_report(summarise(manifest)), description="split sizes by patient")
    return manifest


def run(config: PipelineConfig) -> pd.DataFrame:
    return prepare_flow(config)


if __name__ == "__main__":
    sys.exit(stage_main(run, __doc__))
