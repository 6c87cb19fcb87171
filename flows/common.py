"""What every stage's entry point shares: parse ``--params``, load the config once, fail clearly."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from tasks import project_server
from unet.config import PipelineConfig, load_config
from unet.errors import UserError
from unet.inputs import check_inputs

REPO = Path(__file__).resolve().parents[1]


def stage_main(run: Callable[[PipelineConfig], object], description: str, argv: list[str] | None = None,
               *, prefect: bool = True) -> int:
    """``python -m flows.<stage> [--params params.yaml]``: ``run_stage`` for the module's ``run``."""
    return run_stage(run.__module__.rsplit(".", 1)[-1], lambda: run, description, argv, prefect=prefect)


def run_stage(stage: str, load: Callable[[], Callable[[PipelineConfig], object]], description: str,
              argv: list[str] | None = None, *, prefect: bool = True) -> int:
    """A stage as a command: params, then the stage's inputs, then a Prefect server, then ``load()(config)``.

    The checks come first and need neither Prefect nor torch, so a mistake is one line at once
    (``python -m flows <stage>`` loads the stage's code only after them). A ``UserError`` (a bad
    params value or raw file, missing credentials, a stage to run first) prints its message alone
    and exits 1; any other exception is a bug and keeps its traceback. ``prefect``: False for a
    command that starts no flow run (the demo's summary).
    """
    parser = argparse.ArgumentParser(prog=f"python -m flows {stage}", description=description)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    for name in ("unet", "tasks"):
        logging.getLogger(name).setLevel(logging.INFO)  # shown through Prefect's handlers (flows/__init__.py)
    try:
        config = load_config(args.params)
        check_inputs(stage, config, os.environ)
        with project_server.reporting(code_dir=REPO) if prefect else nullcontext():
            load()(config)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def stage_flow(name: str):
    """``@flow`` for a stage: a ``UserError`` fails the run with its message said once (the run's log
    and state), not with Prefect's traceback; calling the flow still raises it. A bug still raises
    through Prefect with its traceback. Started by the pipeline flow (through DVC), the stage's run
    nests under the pipeline's run (``tasks.nesting``)."""
    from prefect import get_run_logger
    from prefect.states import Failed

    from tasks.common import said_as_store_fault
    from tasks.nesting import StageFlow

    def decorate(fn: Callable):
        guarded = said_as_store_fault(fn)  # an MLflow store that cannot take the stage's writes: a UserError

        @functools.wraps(fn)
        def body(*args, **kwargs):
            try:
                return guarded(*args, **kwargs)
            except UserError as exc:
                get_run_logger().error("%s", exc)
                return Failed(message=str(exc), data=exc)

        return StageFlow(fn=body, name=name, log_prints=True)

    return decorate

