"""The study on a work pool (``cv.executor: pool``): the fold deployment, and a whole cluster on localhost.

    python -m flows.cluster deploy          # the lgg-cv pool and the fold deployment on PREFECT_API_URL
    python -m flows.cluster demo [--workers 2] [--keep]   # make demo-cluster

``demo`` starts PostgreSQL, the Prefect and MLflow servers on it and the workers (``tasks.cluster``),
runs the cv stage through the pool, prints where each fold ran, and stops what it started
(``--keep``: after Enter, so that the UIs can be looked at first).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tasks import cluster
from unet.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def deploy(_: argparse.Namespace) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("PREFECT_API_URL is not set: point it at the shared Prefect server the workers use")
    print(f"deployment {cluster.deploy(REPO)} on work pool {cluster.POOL}; start a worker a GPU: "
          f"CUDA_VISIBLE_DEVICES=k prefect worker start --pool {cluster.POOL} --limit 1")
    return 0


def demo(args: argparse.Namespace) -> int:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    say = lambda line: print(f"demo-cluster: {line}", flush=True)  # noqa: E731
    with cluster.running(REPO / ".cluster", REPO, say=say) as running:
        with temporary_settings(updates={PREFECT_API_URL: running.prefect_api}):
            say(f"deployment {cluster.deploy(REPO)}; {args.workers} workers on pool {cluster.POOL}")
        cluster.start_workers(running, args.workers, REPO, os.environ, gpus=args.gpus)
        metrics = cluster.run_cv(running, REPO, say)
        for run in metrics["fold_runs"]:
            say(f"fold {run['fold']}: {run['worker']}, {run['started']} .. {run['finished']} ({run['attempts']} attempt(s))")
        say(f"overlapping folds on different workers: {cluster.overlaps(metrics['fold_runs']) or 'none'}; "
            f"CV DSC {metrics['dsc_mean']:.3f} over {metrics['n_volumes']} patients; MLflow store "
            f"{metrics.get('tracking_store')}")
        say(f"Prefect UI {running.prefect_api.removesuffix('/api')} (the cv run and its fold runs), MLflow UI "
            f"{running.mlflow_url}; logs in {running.folder}")
        if args.keep and sys.stdin.isatty():
            input("demo-cluster: press Enter to stop the cluster ")
        say("stopping the workers, the servers and PostgreSQL")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("deploy", help="the work pool and the fold deployment on PREFECT_API_URL")
    run = commands.add_parser("demo", help="a cluster on localhost, the cv stage through it, then stop")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--gpus", type=int, default=0, help="worker k on GPU k %% gpus (0: CPU, a core a worker)")
    run.add_argument("--keep", action="store_true", help="stop only after Enter")
    args = parser.parse_args(argv)
    try:
        return {"deploy": deploy, "demo": demo}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
