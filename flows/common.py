"""What every stage's entry point shares: parse ``--params``, load the config once, fail clearly."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from unet.config import PipelineConfig, load_config

# errors whose message already says what to fix: print it, skip the traceback
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, RuntimeError)


def stage_main(flow: Callable[[PipelineConfig], object], description: str, argv: list[str] | None = None) -> int:
    """Run ``flow(config)`` as a command: ``python -m flows.<stage> [--params params.yaml]``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.getLogger("unet").setLevel(logging.INFO)  # shown through Prefect's handlers (flows/__init__.py)
    try:
        config = load_config(args.params)
        flow(config)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


@contextmanager
def process_map(workers: int):
    """A ``map`` over a pool of worker processes (the builtin one for a single worker), in order.

    Processes, not threads: numpy/scipy/skimage image work mostly holds the GIL. ``spawn`` keeps
    the workers clear of the threads Prefect runs in this process.
    """
    if workers <= 1:
        yield map
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool.map


def task_runner(kind: str, workers: int):
    """The Prefect task runner a stage maps its per-patient tasks on.

    ``threads`` (default) suits numpy/scipy work that releases the GIL; ``processes`` sidesteps
    the GIL on one machine; ``dask`` spreads patients over a Dask cluster (``pip install
    prefect-dask``; set ``DASK_SCHEDULER_ADDRESS`` to use a running cluster, else a local one).
    """
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "processes":
        return ProcessPoolTaskRunner(max_workers=workers)
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise RuntimeError(
            "weightmap.task_runner is 'dask' but prefect-dask is not installed: "
            "pip install prefect-dask, or use 'threads'"
        ) from None
    import os

    address = os.environ.get("DASK_SCHEDULER_ADDRESS")
    return DaskTaskRunner(address=address) if address else DaskTaskRunner(cluster_kwargs={"n_workers": workers})
