"""What every stage's tasks share: one decorator, and the task runners patients are mapped on."""

from __future__ import annotations

import os

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from unet.errors import EnvironmentMismatch


def stage_task(name: str, **options):
    """``@task`` as every stage task wants it: named, no Prefect result cache or persistence.

    Inside a DVC stage DVC decides what reruns, so Prefect's own cache stays off; results stay in
    memory. ``options`` adds retries, timeouts or a ``task_run_name``.
    """
    return task(name=name, cache_policy=NO_CACHE, persist_result=False, **options)


def task_runner(kind: str, workers: int, key: str):
    """The Prefect task runner a stage maps its per-patient tasks on (``key`` names its params entry).

    ``threads`` (default) suits numpy/scipy/torch work that releases the GIL; ``processes``
    sidesteps the GIL on one machine; ``dask`` spreads patients over a Dask cluster (``pip install
    prefect-dask``; set ``DASK_SCHEDULER_ADDRESS`` to use a running cluster, else a local one).
    """
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise EnvironmentMismatch(f"{key} is 'dask' but prefect-dask is not installed: "
                                  "pip install prefect-dask, or use 'threads'") from None
    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    return DaskTaskRunner(address=address) if address else DaskTaskRunner(cluster_kwargs={"n_workers": workers})
