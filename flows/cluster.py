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
import signal
import sys
import time
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
        if args.keep:
            keep_until_told()
        say("stopping the workers, the servers and PostgreSQL")
    return 0


def keep_until_told() -> None:
    """Until Enter (a terminal) or Ctrl-C / SIGTERM (anything else: a script that looks at the UIs)."""
    if sys.stdin.isatty():
        try:
            input("demo-cluster: press Enter to stop the cluster ")
        except (KeyboardInterrupt, EOFError):
            pass
        return
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    print("demo-cluster: kept until SIGINT or SIGTERM", flush=True)
    while not stop:
        time.sleep(0.5)


def up(args: argparse.Namespace) -> int:
    """The services for a real study, in the foreground until Ctrl-C or SIGTERM (a tmux pane, a
    SLURM job): what the stage's shell must export is printed."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    with cluster.running(args.folder, REPO, bind=args.bind) as running:
        with temporary_settings(updates={PREFECT_API_URL: running.prefect_api}):
            print(f"deployment {cluster.deploy(REPO)} on work pool {cluster.POOL}")
        if args.workers:
            cluster.start_workers(running, args.workers, REPO, os.environ, gpus=args.gpus)
        env = running.client_environment({})
        print("the cluster is up; in the shell that runs the stage (or the workers):")
        for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "LGG_TRACKING_STORE"):  # none holds the password
            print(f"  export {key}={env[key]}")
        print(f"  export LGG_CV_EXECUTOR=pool   # then: dvc repro cv\n"
              f"workers elsewhere: PREFECT_API_URL=... prefect worker start --pool {cluster.POOL} --limit 1\n"
              f"Prefect UI {running.prefect_api.removesuffix('/api')}, MLflow UI {running.mlflow_url}; Ctrl-C stops "
              "everything", flush=True)
        while not stop and all(s.process.poll() is None for s in running.services if not s.name.startswith("worker")):
            time.sleep(1)
        print("stopping the cluster")
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
