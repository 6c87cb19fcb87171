"""Serve the pipeline's deployments, so runs start from the Prefect UI (``make serve``).

    make ui          # a Prefect server on :4200 and an MLflow server on :5000
    make serve       # this: registers the deployments and runs what the UI starts

Each deployment runs ``flows.pipeline.pipeline_flow`` (a ``dvc exp run`` in this repository) with
its own defaults; every parameter can be changed in the UI's "Custom run" form. Runs go one at a
time (``--limit 1``): two DVC experiments in one workspace would fight over its lock.
"""

from __future__ import annotations

import argparse
import sys

from flows.pipeline import pipeline_flow
from tasks.experiment import check_server
from unet.errors import InputError, UserError

# name -> (description, default parameters)
DEPLOYMENTS: dict[str, tuple[str, dict]] = {
    "dvc-experiment": (
        "The whole DAG as a DVC experiment (dvc exp run -S ...): set epochs, lr, image size, the data "
        "source or any params.yaml key under 'overrides'; see it afterwards in `dvc exp show`.",
        {},
    ),
    "train-only": (
        "Retrain with other hyperparameters: dvc exp run up to the train stage; the data stages are "
        "reused from the DVC cache when their params did not change.",
        {"targets": ["train"]},
    ),
}
TAGS = ["lgg-unet", "dvc"]


def deployments(names: list[str] | None = None) -> list:
    """The RunnerDeployments to serve (all by default)."""
    from prefect.deployments.runner import EntrypointType

    unknown = sorted(set(names or []) - set(DEPLOYMENTS))
    if unknown:
        raise InputError(f"no deployment {', '.join(unknown)}; there are {', '.join(DEPLOYMENTS)}")
    return [
        pipeline_flow.to_deployment(name, description=description, parameters=parameters, tags=TAGS,
                                    entrypoint_type=EntrypointType.MODULE_PATH)
        for name, (description, parameters) in DEPLOYMENTS.items() if not names or name in names
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(DEPLOYMENTS), help="serve only this deployment")
    parser.add_argument("--limit", type=int, default=1, help="runs at a time (default 1: one DVC workspace)")
    args = parser.parse_args(argv)
    from prefect import serve
    from prefect.settings import PREFECT_API_URL

    try:
        check_server(PREFECT_API_URL.value())
        served = deployments(args.only)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    serve(*served, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
