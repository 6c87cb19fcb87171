"""The study on a work pool (``cv.executor: pool``): the fold deployment, and a whole cluster on localhost.

    python -m flows.cluster deploy          # the lgg-cv pool and the fold deployment on PREFECT_API_URL
    python -m flows.cluster demo [--workers 2] [--keep]   # make demo-cluster
    python -m flows.cluster up [--workers 8 --gpus 8] [--bind 0.0.0.0]   # the services (and workers), until Ctrl-C

``demo`` starts PostgreSQL, the Prefect and MLflow servers on it and the workers (``tasks.cluster``),
runs the cv stage through the pool, prints where each fold ran, and stops what it started
(``--keep``: after Enter, or Ctrl-C/SIGTERM without a terminal, so that the UIs can be looked at first).
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
    cluster.demo(REPO, workers=args.workers, gpus=args.gpus, keep=args.keep,
                 say=lambda line: print(f"demo-cluster: {line}", flush=True))
    return 0


def up(args: argparse.Namespace) -> int:
    cluster.serve(REPO, args.folder, workers=args.workers, gpus=args.gpus, bind=args.bind,
                  say=lambda line: print(line, flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("deploy", help="the work pool and the fold deployment on PREFECT_API_URL")
    run = commands.add_parser("demo", help="a cluster on localhost, the cv stage through it, then stop")
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--gpus", type=int, default=0, help="worker k on GPU k %% gpus (0: CPU, a core a worker)")
    run.add_argument("--keep", action="store_true", help="stop only after Enter")
    serve = commands.add_parser("up", help="the database, both servers and workers, until Ctrl-C")
    serve.add_argument("--workers", type=int, default=0, help="workers on this machine (0: none, they run elsewhere)")
    serve.add_argument("--gpus", type=int, default=0, help="worker k on GPU k %% gpus (0: CPU, a core a worker)")
    serve.add_argument("--bind", default="127.0.0.1", help="0.0.0.0: reachable from other machines")
    serve.add_argument("--folder", type=Path, default=REPO / ".cluster", help="the database, logs, artifacts (.cluster/)")
    args = parser.parse_args(argv)
    try:
        return {"deploy": deploy, "demo": demo, "up": up}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
