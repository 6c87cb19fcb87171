"""What every stage's tasks share: one decorator, and the task runners patients are mapped on."""

from __future__ import annotations

import errno
import functools
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


class StoreErrorsShort(logging.Filter):
    """MLflow's SQL store logs a locked or full SQLite file with the statement and two tracebacks
    (60-odd lines) before it raises; the stage then says it in one line (``tracking_fault``), so the
    log keeps the error's first line only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            first = next((line for line in record.getMessage().splitlines()[1:2]), "")
            record.msg, record.args = f"{record.getMessage().splitlines()[0]} {first}".strip(), None
            record.exc_info, record.exc_text = None, None
        return True


logging.getLogger("mlflow.store.db.utils").addFilter(StoreErrorsShort())


class TrackingStoreError(EnvironmentMismatch):
    """The MLflow store cannot take what a stage logs: its artifact folder is read-only or full, or
    its SQLite file is locked or on a full disk."""


_STORE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
_FIX = "; then rerun the stage"


def _raised_in_mlflow(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if f"{os.sep}mlflow{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def tracking_fault(exc: BaseException, depth: int = 3) -> TrackingStoreError | None:
    """``exc`` as one line when it is the MLflow store's fault (a folder or file MLflow could not
    write, a locked or full SQLite file); None for anything else, which keeps its traceback."""
    if isinstance(exc, UserError) or depth == 0:
        return None
    if isinstance(exc, OSError) and exc.errno in _STORE_ERRNOS and _raised_in_mlflow(exc):
        where = f": {exc.filename}" if exc.filename else ""  # the store's folder, or the file being copied there
        return TrackingStoreError(f"MLflow could not write to its store ({exc.strerror}{where}): free some space on "
                                  "the artifact store's disk or make it writable, or point MLFLOW_TRACKING_URI at "
                                  "another store" + _FIX)
    text = str(exc).splitlines()[0] if str(exc) else ""
    if type(exc).__name__ in ("MlflowException", "OperationalError"):
        if "database is locked" in text:
            return TrackingStoreError("the MLflow store's SQLite file is locked by another process (database is "
                                      "locked): close what holds it (a sqlite3 shell, a stuck stage, an MLflow UI "
                                      "writing), or use a tracking server (make ui) for stages that run at once" + _FIX)
        if "disk is full" in text or "disk I/O error" in text:
            return TrackingStoreError(f"the MLflow store's SQLite file cannot be written ({text.split(') ')[-1]}): "
                                      "free some space on its disk or set MLFLOW_TRACKING_URI" + _FIX)
    cause = exc.__cause__ or exc.__context__
    return tracking_fault(cause, depth - 1) if cause is not None else None


def said_as_store_fault(fn: Callable) -> Callable:
    """``fn``, raising ``tracking_fault``'s one line instead of the store's own traceback."""

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if (fault := tracking_fault(exc)) is None:
                raise
            raise fault from None

    return guarded


def stage_task(name: str, **options):
    """``@task`` as every stage task wants it: named, no Prefect result cache or persistence, an
    MLflow store that cannot take its writes said in one line (``tracking_fault``).

    Inside a DVC stage DVC decides what reruns, so Prefect's own cache stays off; results stay in
    memory. ``options`` adds retries, timeouts or a ``task_run_name``.
    """
    def decorate(fn: Callable):
        return task(said_as_store_fault(fn), name=name, cache_policy=NO_CACHE, persist_result=False, **options)

    return decorate


@stage_task(name="item", task_run_name="{label}-{item}")
def _one_item(work: Callable[[Any], Any], item: Any, label: str) -> Any:
    return work(item)


def each_task(label: str, *, in_turn: bool = False, **options):
    """A stage's ``each`` (``unet.fanout``): one Prefect task an item (``<label>-<item>``), results in
    the items' order; ``options``: retries and the like.

    The tasks run on the flow's task runner, or, ``in_turn``, one after the other in this thread:
    for work that takes every core itself (a training, a model's inference) and should stop with
    the stage when it is interrupted."""
    one = _one_item.with_options(name=label, **options)

    def each(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if in_turn:
            return [one(work, item, label) for item in items]
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
