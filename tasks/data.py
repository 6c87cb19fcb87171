"""Tasks of the ``download`` and ``prepare`` stages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from unet.download import sources, synthetic
from unet.prepare import stage as prepare
from unet.config import DataConfig, PrepareConfig


def _network_fault(task, task_run, state) -> bool:
    """Retry only what a retry can fix: network and server faults, not credentials or bad files."""
    return isinstance(state.result(raise_on_failure=False), sources.DownloadError)


@task(
    name="download-kaggle",
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=_network_fault,
    timeout_seconds=3 * 3600,  # the client's first request has no timeout of its own
    cache_policy=NO_CACHE,
    persist_result=False,
)
def download_kaggle(dataset: str, dest: Path) -> Path:
    return sources.download_kaggle(dataset, dest)


@task(name="extract-archive", cache_policy=NO_CACHE, persist_result=False)
def extract_archive(archive: Path, dest: Path) -> Path:
    return sources.extract_archive(archive, dest)


@task(name="use-local-folder", cache_policy=NO_CACHE, persist_result=False)
def use_local(folder: Path, dest: Path, copy: bool) -> Path:
    return sources.use_local(folder, dest, copy=copy)


@task(name="generate-synthetic", cache_policy=NO_CACHE, persist_result=False)
def generate_synthetic(config: DataConfig) -> Path:
    s = config.synthetic
    return synthetic.write_synthetic_dataset(
        config.raw_root, n_patients=s.n_patients, min_slices=s.min_slices,
        max_slices=s.max_slices, image_size=s.image_size, seed=s.seed, overwrite=True,
    )


@task(name="prepare-dataset", cache_policy=NO_CACHE, persist_result=False)
def prepare_dataset(raw_root: Path, config: PrepareConfig, map_fn=map) -> pd.DataFrame:
    return prepare.prepare_dataset(raw_root, config, map_fn=map_fn)
