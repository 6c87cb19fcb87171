"""How a stage fans its per-item work out: ``each(work, items) -> results``, in the items' order.

A stage's ``run(config, *, each=serial)`` calls ``each`` once with a one-argument function and the
items (patient folders, folds). ``serial`` runs them here, one after the other (the tests, the
benchmarks); ``tasks.common.each_task`` runs each item as a Prefect task on the flow's task runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol


class Each(Protocol):
    def __call__(self, work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...


def serial(work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    """Every item here, in order."""
    return [work(item) for item in items]
