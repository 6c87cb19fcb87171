"""What every stage's tasks share: one decorator, and the task runners patients are mapped on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

from unet.errors import EnvironmentMismatch, UserError


class UserErrorsSaidOnce(logging.Filter):
    """A task run that fails with a ``UserError`` is logged as one line, not with the engine's
    traceback (the stage then says the message once more as its ``error:`` line); a bug keeps it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("prefect.task_runs").addFilter(UserErrorsSaidOnce())


def stage_task(name: str, **options):
    """``@task`` as every stage task wants it: named, no Prefect result cache or persistence.

    Inside a DVC stage DVC decides what reruns, so Prefect's own cache stays off; results stay in
    memory. ``options`` adds retries, timeouts or a ``task_run_name``.
    """
    return task(name=name, cache_policy=NO_CACHE, persist_result=False, **options)


@stage_task(name="item", task_run_name="{label}-{item}")
def _one_item(work: Callable[[Any], Any], item: Any, label: str) -> Any:
    return work(item)


def each_task(label: str, **options):
    """A stage's ``each`` (``unet.fanout``): one Prefect task an item (``<label>-<item>``), on the flow's
    task runner, results in the items' order. ``options``: retries and the like."""
    one = _one_item.with_options(name=label, **options) if options else _one_item.with_options(name=label)

    def each(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        futures = one.map(unmapped(work), list(items), label=unmapped(label))
        return [future.result() for future in futures]

    return each


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
