"""A study cluster on one machine: PostgreSQL, the Prefect and MLflow servers on it, process workers.

``make demo-cluster`` (``python -m flows.cluster demo``) starts it all under ``.cluster/``, runs the
cv stage through the work pool and stops everything it started. The same pieces make a real
cluster (README, "The study on several machines"): one machine runs ``start_database``,
``start_prefect`` and ``start_mlflow`` (or your group's own servers), each GPU runs a worker.

    .cluster/lock          held while a demo cluster runs: a second one is refused
    .cluster/postgres/     the database (tasks.postgres; under root, where 'nobody' cannot reach it,
                           a folder of its own in /tmp)
    .cluster/prefect/      the Prefect server's home; prefect.log
    .cluster/mlartifacts/  MLflow's artifacts (a shared folder on a real cluster); mlflow.log
    .cluster/worker-<k>.log

Credentials: the database password comes from ``LGG_DB_PASSWORD`` (a random one for the demo when
unset) and reaches the servers in their environment only; nothing written here holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tasks import postgres
from tasks.project_server import free_port
from tasks.server import HOST, answers, prefect_command, server_command, server_environment
from unet.errors import EnvironmentMismatch

POOL = "lgg-cv"
DEPLOYMENT = "lgg-cv-fold"
START_WAIT_S = 600  # servers on a busy machine take minutes
Say = Callable[[str], None]


@dataclass
class Service:
    name: str
    process: subprocess.Popen
    log: Path
    url: str = ""


@dataclass
class Cluster:
    """``bind``: the address the servers listen on (0.0.0.0: workers on other machines); ``name``:
    the host clients reach them by."""

    folder: Path
    database: postgres.Database
    password: str = field(repr=False)
    bind: str = HOST
    name: str = HOST
    services: list[Service] = field(default_factory=list)

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    @property
    def prefect_api(self) -> str:
        return self.service("prefect").url

    @property
    def mlflow_url(self) -> str:
        return self.service("mlflow").url

    @property
    def workers(self) -> list[Service]:
        return [s for s in self.services if s.name.startswith("worker-")]

    def tracking_store(self) -> str:
        return postgres.without_password(self.database.url("mlflow", self.password))

    def client_environment(self, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
        """What a stage or worker reports with: the cluster's Prefect API and MLflow server."""
        path = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), environ.get("PATH")]))
        return {**environ, "PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_url,
                "LGG_TRACKING_STORE": self.tracking_store(), "PATH": path}  # DVC's stages run this venv's python


@contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """``folder/lock`` held for the block: a second cluster in the same folder is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".gitignore").write_text("*\n")
    with open(folder / "lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise EnvironmentMismatch(f"a demo cluster already runs here ({holder}; lock {folder / 'lock'}): wait for it "
                                      "to finish, or stop that process") from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)


def spawn(name: str, command: list[str], log: Path, env: Mapping[str, str], cwd: Path,
          cpus: set[int] | None = None) -> subprocess.Popen:
    """A service in a session of its own (``stop`` ends its whole process group, children too)."""
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    handle = open(log, "a")
    handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: {name} ---\n")
    handle.flush()
    return subprocess.Popen(command, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, stdout=handle,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pin if cpus else None)


def wait_for(service: Service, health: str, say: Say, wait_s: float = START_WAIT_S) -> None:
    started, told = time.monotonic(), time.monotonic()
    while answers(health, timeout=2.0) is not None:
        if service.process.poll() is not None:
            raise EnvironmentMismatch(f"the {service.name} server ended ({service.process.returncode}); the end of "
                                      f"{service.log}:\n{_tail(service.log)}")
        if time.monotonic() - started > wait_s:
            raise EnvironmentMismatch(f"the {service.name} server did not answer at {health} in {wait_s:g} s; "
                                      f"see {service.log}")
        if time.monotonic() - told > 15:
            say(f"waiting for the {service.name} server ({time.monotonic() - started:.0f} s; log {service.log})")
            told = time.monotonic()
        time.sleep(0.5)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_database(folder: Path, password: str, bind: str = HOST, name: str = HOST, say: Say = print) -> postgres.Database:
    place = postgres.placed(folder / "postgres")
    if place != folder / "postgres":
        say(f"the database runs as 'nobody', who cannot reach {folder}: it lives in {place}")
    database = postgres.start(place, free_port(), password, host=bind)
    return postgres.Database(database.folder, name, database.port)


def start_prefect(cluster: Cluster, code_dir: Path, say: Say, environ: Mapping[str, str]) -> Service:
    """Prefect's server on the cluster's PostgreSQL (``prefect`` database), locked down as
    ``tasks.server`` says."""
    port, home = free_port(), cluster.folder / "prefect"
    home.mkdir(exist_ok=True)
    env = server_environment(port, home, environ, name=cluster.name) | {
        "PREFECT_API_DATABASE_CONNECTION_URL": cluster.database.url("prefect", cluster.password, "postgresql+asyncpg"),
        "PYTHONPATH": str(code_dir)}
    env.pop("PREFECT_API_URL", None)
    command = server_command(sys.executable, port, bind=cluster.bind)
    service = Service("prefect", spawn("prefect server", command, cluster.folder / "prefect.log", env, code_dir),
                      cluster.folder / "prefect.log", f"http://{cluster.name}:{port}/api")
    cluster.services.append(service)
    wait_for(service, f"{service.url}/health", say)
    return service


def start_mlflow(cluster: Cluster, code_dir: Path, say: Say, environ: Mapping[str, str]) -> Service:
    """MLflow's tracking server on the cluster's PostgreSQL (``mlflow`` database), artifacts served
    from ``mlartifacts/`` (a shared folder on a real cluster)."""
    port = free_port()
    artifacts = cluster.folder / "mlartifacts"
    artifacts.mkdir(exist_ok=True)
    env = {**environ, "MLFLOW_BACKEND_STORE_URI": cluster.database.url("mlflow", cluster.password, "postgresql+psycopg"),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", cluster.bind, "--port", str(port),
               "--workers", "1", "--artifacts-destination", str(artifacts),
               "--allowed-hosts", ",".join(sorted({cluster.name, f"{cluster.name}:{port}", HOST, f"{HOST}:{port}",
                                                   "localhost", f"localhost:{port}"}))]
    service = Service("mlflow", spawn("mlflow server", command, cluster.folder / "mlflow.log", env, code_dir),
                      cluster.folder / "mlflow.log", f"http://{cluster.name}:{port}")
    cluster.services.append(service)
    wait_for(service, f"{service.url}/health", say)
    return service


def deploy(code_dir: Path, pool: str = POOL, name: str = DEPLOYMENT) -> str:
    """The work pool (process workers) and the fold deployment on the current Prefect API; the
    deployment runs ``flows/cv_fold.py`` from ``code_dir`` (the same path on every worker)."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process",
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))
    fold_flow = flow.from_source(source=str(code_dir), entrypoint="flows/cv_fold.py:fold_flow")
    fold_flow.deploy(name=name, work_pool_name=pool, print_next_steps=False, ignore_warnings=True, tags=["lgg-unet", "cv"],
                     description="One cross-validation fold (the cv stage with cv.executor: pool starts these)")
    return f"{fold_flow.name}/{name}"


def worker_command(pool: str, name: str) -> list[str]:
    """A process worker that runs one fold at a time."""
    return [*prefect_command(sys.executable), "worker", "start", "--pool", pool, "--limit", "1", "--name", name]


def start_workers(cluster: Cluster, count: int, code_dir: Path, environ: Mapping[str, str],
                  gpus: int = 0, pool: str = POOL) -> list[Service]:
    """``count`` process workers, one fold at a time each: worker ``k`` on GPU ``k`` where there are
    GPUs (``CUDA_VISIBLE_DEVICES``), else pinned to one CPU core (so ``train.threads: auto`` gives
    each fold one thread and two folds do not fight over the same cores)."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    started = []
    for k in range(count):
        name = f"worker-{k}"
        env = cluster.client_environment(environ) | {  # a free worker takes a fold within 2 s
            "LGG_WORKER": name, "PYTHONPATH": str(code_dir), "PREFECT_WORKER_QUERY_SECONDS": "2"}
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(k % gpus)
        log = cluster.folder / f"{name}.log"
        process = spawn(name, worker_command(pool, name), log, env, code_dir,
                        cpus={cpus[k % len(cpus)]} if cpus and not gpus else None)
        started.append(Service(name, process, log))
    cluster.services.extend(started)
    return started


def stop_service(service: Service, timeout_s: float = 20.0) -> None:
    """The service's whole process group: TERM, then KILL after ``timeout_s``."""
    if service.process.poll() is not None:
        return
    try:
        os.killpg(service.process.pid, signal.SIGTERM)
        service.process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait()
    except ProcessLookupError:
        pass


def kill_service(service: Service) -> None:
    """As a machine dies: the whole group at once, nothing told."""
    try:
        os.killpg(service.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    service.process.wait()


@contextmanager
def running(folder: Path, code_dir: Path, *, say: Say = print, environ: Mapping[str, str] = os.environ,
            bind: str = HOST) -> Iterator[Cluster]:
    """The database and both servers up (refused while another cluster runs in ``folder``), all
    stopped afterwards, workers included. ``bind`` 0.0.0.0: reachable from other machines, by this
    machine's name."""
    password = environ.get(postgres.PASSWORD_VARIABLE) or secrets.token_urlsafe(24)
    name = socket.getfqdn() if bind == "0.0.0.0" else bind
    with exclusive(folder):
        say("PostgreSQL")
        cluster = Cluster(folder, start_database(folder, password, bind, name, say), password, bind, name)
        try:
            say("the Prefect server, on PostgreSQL")
            start_prefect(cluster, code_dir, say, environ)
            say("the MLflow server, on PostgreSQL")
            start_mlflow(cluster, code_dir, say, environ)
            yield cluster
        finally:
            for service in reversed(cluster.services):
                stop_service(service)
            postgres.stop(cluster.database.folder)


# ---------------------------------------------------------------- the demo

def run_cv(cluster: Cluster, code_dir: Path, say: Say, environ: Mapping[str, str] = os.environ) -> dict:
    """The cv stage through the pool, as DVC runs it: its inputs first (``dvc repro augment``), then
    the stage with every fold trained afresh (the workspace's folds are in DVC's cache:
    ``dvc checkout data/cv`` brings them back), reporting to the cluster's servers; ``cv.json`` with
    where and when each fold ran."""
    from unet.config import load_config

    dvc = str(Path(sys.executable).with_name("dvc"))
    env = cluster.client_environment(environ) | {"LGG_CV_EXECUTOR": "pool"}
    if subprocess.call([dvc, "repro", "augment"], cwd=code_dir, env=env):
        raise EnvironmentMismatch("dvc repro augment failed (above): the cv stage's inputs are missing")
    cv_config = load_config(code_dir / "params.yaml")
    cv = cv_config.cv
    for folder in sorted((code_dir / cv.out_dir).glob("fold-*")):
        say(f"removing {folder.relative_to(code_dir)}: the demo trains every fold on the pool")
        shutil.rmtree(folder)
    if subprocess.call([dvc, "repro", "--force", "--single-item", "cv"], cwd=code_dir, env=env):
        raise EnvironmentMismatch("the cv stage failed on the pool (above); the workers' logs are in "
                                  f"{cluster.folder}")
    from unet.cv.stage import fold_runs

    return {**json.loads((code_dir / cv.metrics_path).read_text()), "fold_runs": fold_runs(cv_config, code_dir)}


def overlaps(runs: list[dict]) -> list[tuple[int, int]]:
    """Pairs of folds whose runs overlapped in time on different workers."""
    from datetime import datetime

    spans = [(r["fold"], r["worker"], datetime.fromisoformat(r["started"]), datetime.fromisoformat(r["finished"]))
             for r in runs if r.get("started") and r.get("finished")]
    return [(a[0], b[0]) for i, a in enumerate(spans) for b in spans[i + 1:]
            if a[1] != b[1] and a[2] < b[3] and b[2] < a[3]]


def deploy_on(cluster: Cluster, code_dir: Path) -> str:
    """The pool and the fold deployment on the cluster's own Prefect server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: cluster.prefect_api}):
        return deploy(code_dir)


def until_signalled(alive: Callable[[], bool] = lambda: True) -> None:
    """Until SIGINT or SIGTERM (or ``alive()`` turns False)."""
    stop = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.append(True))
    while not stop and alive():
        time.sleep(0.5)


def keep_until_told(say: Say) -> None:
    """Until Enter (a terminal) or Ctrl-C / SIGTERM (anything else: a script that looks at the UIs)."""
    if sys.stdin.isatty():
        try:
            input("press Enter to stop the cluster ")
        except (KeyboardInterrupt, EOFError):
            pass
        return
    say("kept until SIGINT or SIGTERM")
    until_signalled()


def demo(code_dir: Path, *, workers: int = 2, gpus: int = 0, keep: bool = False, say: Say = print) -> dict:
    """``make demo-cluster``: the cluster on localhost, the cv stage through its pool, what ran where,
    then everything stopped (``keep``: after Enter or a signal); ``cv.json``."""
    with running(code_dir / ".cluster", code_dir, say=say) as cluster:
        say(f"deployment {deploy_on(cluster, code_dir)}; {workers} workers on pool {POOL}")
        start_workers(cluster, workers, code_dir, os.environ, gpus=gpus)
        metrics = run_cv(cluster, code_dir, say)
        for run in metrics["fold_runs"]:
            say(f"fold {run['fold']}: {run['worker']}, {run['started']} .. {run['finished']} ({run['attempts']} attempt(s))")
        say(f"overlapping folds on different workers: {overlaps(metrics['fold_runs']) or 'none'}; CV DSC "
            f"{metrics['dsc_mean']:.3f} over {metrics['n_volumes']} patients; MLflow store {metrics.get('tracking_store')}")
        say(f"Prefect UI {cluster.prefect_api.removesuffix('/api')} (the cv run and its fold runs), MLflow UI "
            f"{cluster.mlflow_url}; logs in {cluster.folder}")
        if keep:
            keep_until_told(say)
        say("stopping the workers, the servers and PostgreSQL")
    return metrics


def serve(code_dir: Path, folder: Path, *, workers: int = 0, gpus: int = 0, bind: str = HOST, say: Say = print) -> None:
    """The services for a real study in the foreground until Ctrl-C or SIGTERM (a tmux pane, a SLURM
    job), saying what the stage's shell must export (nothing with the password)."""
    with running(folder, code_dir, bind=bind, say=say) as cluster:
        say(f"deployment {deploy_on(cluster, code_dir)} on work pool {POOL}")
        if workers:
            start_workers(cluster, workers, code_dir, os.environ, gpus=gpus)
        env = cluster.client_environment({})
        say("the cluster is up; in the shell that runs the stage (or the workers):\n"
            + "".join(f"  export {key}={env[key]}\n" for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI",
                                                                 "LGG_TRACKING_STORE"))
            + f"  export LGG_CV_EXECUTOR=pool   # then: dvc repro cv\n"
              f"workers elsewhere: PREFECT_API_URL=... prefect worker start --pool {POOL} --limit 1\n"
              f"Prefect UI {cluster.prefect_api.removesuffix('/api')}, MLflow UI {cluster.mlflow_url}; Ctrl-C stops "
              "everything")
        until_signalled(lambda: all(s.process.poll() is None for s in cluster.services if s not in cluster.workers))
        say("stopping the cluster")
