"""Serve the pipeline's deployments, so runs start from the Prefect UI (``make deploy``).

    make ui          # a Prefect server on :4200 and an MLflow server on :5000
    make deploy       # this: registers the deployments and runs what the UI starts

Each deployment runs ``flows.pipeline.pipeline_flow`` (``dvc exp run --temp`` in this repository:
the workspace stays as it is; ``dvc exp apply NAME`` brings a run in) with its own defaults; every
parameter can be changed in the UI's "Custom run" form, and the API refuses any it does not know
(the parameter schema is enforced). Runs go one at a time (``--limit 1``).
"""

from __future__ import annotations

import argparse
import sys

from flows.pipeline import REPO, pipeline_flow
from tasks import experiment, project_server
from tasks.server import check_server
from unet.config import load_config
from unet.errors import InputError, UserError

# name -> (description, default parameters)
DEPLOYMENTS: dict[str, tuple[str, dict]] = {
    "dvc-experiment": (
        "The whole DAG as a DVC experiment in a temporary copy (dvc exp run --temp -S ...): your workspace, "
        "params.yaml and models stay as they are. Set epochs, lr, image size, the data source or any "
        "params.yaml key but paths under 'overrides'; compare with `dvc exp show`, bring a run into the "
        "workspace with `dvc exp apply NAME`.",
        {},
    ),
    "train-only": (
        "Retrain with other hyperparameters: dvc exp run --temp up to the train stage (the workspace stays "
        "as it is); the data stages are reused from the DVC cache when their params did not change.",
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
    config = load_config(REPO / "params.yaml")  # the run form shows its values (a bad file: its own message)
    return [
        experiment.showing_current_values(experiment.refusing_unknown_parameters(pipeline_flow.to_deployment(
            name, description=description, parameters=parameters, tags=TAGS,
            entrypoint_type=EntrypointType.MODULE_PATH, enforce_parameter_schema=True)), config)
        for name, (description, parameters) in DEPLOYMENTS.items() if not names or name in names
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(DEPLOYMENTS), help="serve only this deployment")
    parser.add_argument("--limit", type=int, default=1, help="runs at a time (default 1: one DVC workspace)")
    args = parser.parse_args(argv)
    from prefect import serve

    try:
        with project_server.reporting(code_dir=REPO) as url:  # PREFECT_API_URL, else the project's server
            check_server(url)
            served = deployments(args.only)
            serve(*served, limit=args.limit)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
