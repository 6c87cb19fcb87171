"""The one shape every stage has, and how a stage fans its per-item work out.

Every stage of dvc.yaml is three files (``tests/test_stage_shape.py`` holds them to it):

* ``unet/<stage>/stage.py``: ``run(config, *, each=serial, ...) -> summary``, the whole stage. It reads
  its inputs, hands its items (patients, split parts, folds, the one model, the data source) with a
  one-argument function to ``each``, writes its outputs whole or not at all, and returns the summary
  (a dict). Other keyword arguments are hooks with defaults (an epoch callback, the MLflow registry),
  so ``run(config)`` alone runs the stage: the tests, the benchmarks, torchrun's other ranks.
  ``describe(summary) -> str`` is the stage's line for the log.
* ``tasks/<stage>.py``: ``run(config) -> summary``, the stage with ``each`` over Prefect tasks and its
  MLflow hooks; ``publish_report(config, summary)``, the run's Prefect report.
* ``flows/<stage>.py``: the ``@stage_flow`` that calls those three in that order, and ``run(config)``.

A new stage is a copy of any of them. ``each(work, items) -> results`` keeps the items' order:
``serial`` runs them here one after the other; ``in_processes`` in a pool of processes (image work
that holds the GIL); ``tasks.common.each_task`` as one Prefect task an item on the flow's task runner.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Protocol


class Each(Protocol):
    def __call__(self, work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...


def serial(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Every item here, in order."""
    return [work(item) for item in items]


@contextmanager
def in_processes(workers: int) -> Iterator[Each]:
    """An ``each`` over a pool of ``workers`` processes (``serial`` for one), in the items' order.

    Processes, not threads, for numpy, scipy and skimage image work that holds the GIL; ``spawn``
    keeps the workers clear of the threads Prefect runs in the parent process. ``work`` must pickle
    (a module-level function, or a ``functools.partial`` of one).
    """
    if workers <= 1:
        yield serial
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda work, items: list(pool.map(work, items))
