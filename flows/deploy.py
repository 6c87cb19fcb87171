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
import urllib.error
import urllib.request

from flows.pipeline import pipeline_flow

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
        raise ValueError(f"no deployment {', '.join(unknown)}; there are {', '.join(DEPLOYMENTS)}")
    return [
        pipeline_flow.to_deployment(name, description=description, parameters=parameters, tags=TAGS,
                                    entrypoint_type=EntrypointType.MODULE_PATH)
        for name, (description, parameters) in DEPLOYMENTS.items() if not names or name in names
    ]


def check_server(api_url: str | None) -> str:
    """The API must be a server that stays up: runs started from its UI are what this serves."""
    if not api_url:
        raise RuntimeError("PREFECT_API_URL is not set: start a server (make ui) and "
                           "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=5):
            return api_url
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"no Prefect server answers at {api_url} ({exc}): start one with make ui") from None


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
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    serve(*served, limit=args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
