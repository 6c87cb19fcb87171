"""Tasks of the ``download`` stage: one a source; retries only for network faults."""

from __future__ import annotations

from pathlib import Path

from prefect.tasks import exponential_backoff

from tasks.common import stage_task
from unet.config import DataConfig
from unet.download import sources
from unet.synthetic import generate as synthetic


def _network_fault(task, task_run, state) -> bool:
    """Retry only what a retry can fix: network and server faults, not credentials or bad files."""
    return isinstance(state.result(raise_on_failure=False), sources.DownloadError)


@stage_task(
    name="download-kaggle",
    retries=4,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=_network_fault,
    timeout_seconds=3 * 3600,  # the client's first request has no timeout of its own
)
def download_kaggle(dataset: str, dest: Path) -> Path:
    return sources.download_kaggle(dataset, dest)


@stage_task(name="extract-archive")
def extract_archive(archive: Path, dest: Path) -> Path:
    return sources.extract_archive(archive, dest)


@stage_task(name="use-local-folder")
def use_local(folder: Path, dest: Path, copy: bool) -> Path:
    return sources.use_local(folder, dest, copy=copy)


@stage_task(name="generate-synthetic")
def generate_synthetic(config: DataConfig) -> Path:
    s = config.synthetic
    return synthetic.write_synthetic_dataset(
        config.raw_root, n_patients=s.n_patients, min_slices=s.min_slices,
        max_slices=s.max_slices, image_size=s.image_size, seed=s.seed, anatomy=s.anatomy, overwrite=True,
    )


def fetch(config: DataConfig) -> Path:
    """The task for ``config.source``; returns the kaggle_3m folder."""
    if config.source == "kaggle":
        return download_kaggle(config.kaggle_dataset, config.raw_dir)
    if config.source == "archive":
        return extract_archive(config.path, config.raw_dir)
    if config.source == "local":
        return use_local(config.path, config.raw_dir, config.copy_local)
    return generate_synthetic(config)
