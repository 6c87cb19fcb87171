"""The cv stage's folds as flow runs on a Prefect work pool (``cv.executor: pool``).

The stage (``flows.cv``) creates one run a fold of the ``cv-fold`` deployment (``flows.cv_fold``)
with ``run_deployment`` and waits for all of them; the pool's process workers run them, one a
worker (``prefect worker start --pool lgg-cv --limit 1``; ``CUDA_VISIBLE_DEVICES`` pins a worker,
hence its fold, to a GPU). Each run is ``unet.cv.stage.run_fold``, as in the local loop, in the
stage's own folder: the repository must sit at the same path on every worker (a shared folder),
and the results land where the stage reads them.

What the wait handles, as Prefect leaves it to the caller:

* a child's end is not the parent's: every fold's final state is read; a failed fold fails the
  stage with its message (and the other folds are cancelled);
* a worker that dies leaves its run "Running" for ever: each fold beats a lease file
  (``<cv.out_dir>/leases/fold-<k>.json``) while it runs, and a fold whose lease has not moved for
  ``cv.pool.lost_after_s`` (on the stage's own clock: no two machines' clocks are compared) is
  marked Crashed and started again; its next run resumes from the last epoch's checkpoint on
  whichever worker is free (``cv.pool.retries`` times at most);
* the wait is bounded (``cv.pool.wait_minutes``);
* a fold that finished with the same key is never sent again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd

from tasks.project_server import project_root
from unet.config import PipelineConfig, parse_config
from unet.cv import stage
from unet.cv.folds import assignments, fold_key
from unet.errors import InputError, UserError
from unet.io.atomic import atomic_file

log = logging.getLogger(__name__)

EXECUTOR_VARIABLE = "LGG_CV_EXECUTOR"  # overrides cv.executor without touching params.yaml
EXECUTORS = ("local", "pool")
BEAT_S = 2.0
POLL_S = 2.0
LEASES = "leases"


def executor(config: PipelineConfig, environ: Mapping[str, str] = os.environ) -> str:
    """``LGG_CV_EXECUTOR`` when set, else ``cv.executor``: where the folds run."""
    chosen = environ.get(EXECUTOR_VARIABLE) or config.cv.executor
    if chosen not in EXECUTORS:
        raise InputError(f"{EXECUTOR_VARIABLE}={chosen!r}: use one of {', '.join(EXECUTORS)}")
    return chosen


def lease_path(config: PipelineConfig, fold: int) -> Path:
    return config.cv.out_dir / LEASES / f"fold-{fold:02d}.json"


def read_lease(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_lease(path: Path, lease: dict[str, Any]) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(lease, handle)


# ---------------------------------------------------------------- a fold on a worker

ROOTS_VARIABLE = "LGG_FOLD_ROOTS"  # a worker's extra folders (os.pathsep-separated) to train folds in


def checked_workdir(workdir: str, code_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """The folder a fold runs in: this worker's repository or a DVC experiment's copy of it, or a
    folder under one of ``LGG_FOLD_ROOTS``; any other is refused (a served deployment must not
    train in, or delete from, a stranger's folder)."""
    folder = Path(workdir).resolve()
    if not folder.is_dir():
        raise InputError(f"the fold's folder {folder} does not exist on this worker ({os.uname().nodename}): the "
                         "repository must sit at the same path on every worker (a shared folder)")
    roots = [Path(p).resolve() for p in environ.get(ROOTS_VARIABLE, "").split(os.pathsep) if p]
    if project_root(folder) != code_dir.resolve() and not any(r in (folder, *folder.parents) for r in roots):
        raise InputError(f"the fold's folder {folder} is not this worker's repository ({code_dir}) nor a DVC "
                         f"experiment's copy of it: start the worker from the repository the stage runs in (or "
                         f"name the folder's parent in {ROOTS_VARIABLE})")
    return folder


def _stat(pid: int) -> tuple[int, str, bytes] | None:
    """(parent pid, state, command line) of ``pid`` from /proc; None when it is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0], Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    found = _stat(pid)
    return found is not None and found[1] != "Z"


def worker_process(pid: int | None = None) -> int | None:
    """The Prefect worker this process runs under (the nearest ancestor running ``worker start``)."""
    pid = os.getppid() if pid is None else pid
    while pid > 1 and (found := _stat(pid)) is not None:
        if b"worker\x00start" in found[2]:
            return pid
        pid = found[0]
    return None


class Beating:
    """The lease, beaten every ``BEAT_S`` seconds from a thread while the fold trains. This process
    ends at once when the lease names another run (the stage gave the fold up and started it again
    elsewhere: two runs never train one fold) or when its worker is gone (Prefect starts a run in a
    session of its own, so a stopped worker would leave it training unseen; its lease then stands
    still and the stage sends the fold to a worker that is up)."""

    def __init__(self, path: Path, flow_run: str, worker: str):
        self.path, self.flow_run, self.worker, self.beats = path, flow_run, worker, 0
        self.worker_pid = worker_process()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="fold-lease", daemon=True)

    def _beat(self) -> None:
        # no logging on the way out: the run's stdout is a pipe to the worker, which may be gone (a write
        # there can block for ever); the lease file says why instead
        while not self.stopped.wait(BEAT_S):
            owner = read_lease(self.path).get("flow_run")
            if owner and owner != self.flow_run:
                os._exit(75)  # the stage gave this run up and started the fold again elsewhere: its lease now
            if self.worker_pid and not alive(self.worker_pid):
                self.write(stopped=f"the worker that started this run (pid {self.worker_pid}) is gone")
                os._exit(75)
            self.write()

    def write(self, **extra: str) -> None:
        self.beats += 1
        write_lease(self.path, {"flow_run": self.flow_run, "worker": self.worker, "beats": self.beats,
                                "pid": os.getpid(), "worker_pid": self.worker_pid, **extra})

    def __enter__(self) -> Beating:
        self.write()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()


def train_fold(code_dir: Path, workdir: str, config_values: dict[str, Any], fold: int, key: str,
               flow_run: str, on_epoch: Callable | None = None) -> dict[str, Any]:
    """One fold, as the pool's worker runs it: in ``workdir``, on the stage's config, checked
    against the stage's key (the data and recipe the stage saw); a short summary back."""
    folder = checked_workdir(workdir, code_dir)
    os.chdir(folder)
    config = parse_config(config_values, source="the cv stage's config (sent with the fold's run)")
    out = (folder / config.cv.out_dir).resolve()
    if folder not in (out, *out.parents):
        raise InputError(f"cv.out_dir {config.cv.out_dir} is outside {folder}: a fold writes only inside its stage's folder")
    with Beating(lease_path(config, fold), flow_run, stage.worker_name()):
        studied = stage.studied_manifest(config)
        folds = assignments(studied, config)
        if fold >= len(folds):
            raise InputError(f"fold {fold}: cv.folds is {len(folds)}")
        mine = fold_key(folds[fold], config, stage.data_digest(config))
        if mine != key:
            raise InputError(f"fold {fold}: the data or params in {folder} are not what the cv stage started the fold "
                             f"with (key {mine}, the stage's {key}): a worker sees another copy of the repository, "
                             "or it changed meanwhile; rerun the stage")
        table = stage.run_fold(config, studied, fold, folds[fold], on_epoch, key=key, run=flow_run)
    return {"fold": fold, "patients": int(len(table)), "dsc_mean": float(table["dsc"].mean()),
            "worker": stage.worker_name()}


# ---------------------------------------------------------------- the stage's side

@dataclass
class FoldRun:
    """One fold's current flow run, and what the stage has seen of its lease."""

    fold: int
    flow_run: UUID
    attempt: int
    seen: tuple = ()
    moved: float = field(default_factory=time.monotonic)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def check_pool(config: PipelineConfig) -> None:
    """The deployment must exist on this Prefect API; a pool with no worker up is said, not refused
    (workers may be starting)."""
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    pool = config.cv.pool
    with _client() as client:
        try:
            deployment = client.read_deployment_by_name(pool.deployment)
        except ObjectNotFound:
            raise UserError(f"cv.executor is pool, but the Prefect API {PREFECT_API_URL.value()} has no deployment "
                            f"{pool.deployment!r}: deploy it (python -m flows.cluster deploy) and start workers, or "
                            "run make demo-cluster; cv.executor: local trains the folds here") from None
        workers = client.read_workers_for_work_pool(deployment.work_pool_name) if deployment.work_pool_name else []
    online = [w for w in workers if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"]
    if not online:
        log.warning("work pool %s has no worker online yet: the folds wait for one (at most %g minutes)",
                    deployment.work_pool_name, pool.wait_minutes)


def submit(config: PipelineConfig, fold: int, key: str, attempt: int) -> FoldRun:
    from prefect.deployments import run_deployment

    run = run_deployment(config.cv.pool.deployment, timeout=0, as_subflow=True,
                         flow_run_name=f"fold-{fold}" + (f"-attempt-{attempt}" if attempt > 1 else ""),
                         parameters={"workdir": str(Path.cwd().resolve()), "config": config.model_dump(mode="json"),
                                     "fold": fold, "key": key})
    write_lease(lease_path(config, fold), {"flow_run": str(run.id), "worker": None, "beats": 0})  # claimed
    log.info("fold %d: flow run %s (attempt %d) on the pool", fold, run.name, attempt)
    return FoldRun(fold, run.id, attempt)


def lost(config: PipelineConfig, run: FoldRun, running: bool) -> bool:
    """Whether a Running fold is lost: its lease says it stopped, or has stood still for ``lost_after_s``
    (on the stage's clock)."""
    lease = read_lease(lease_path(config, run.fold))
    if lease.get("stopped") and lease.get("flow_run") == str(run.flow_run):
        return True  # the run said it stopped (its worker is gone): no need to wait for the silence
    seen = (lease.get("flow_run"), lease.get("beats"), running)
    if seen != run.seen:
        run.seen, run.moved = seen, time.monotonic()
        return False
    return running and time.monotonic() - run.moved > config.cv.pool.lost_after_s


def give_up(client, run: FoldRun, message: str, cancel: bool = False) -> None:
    from prefect.states import Cancelling, Crashed

    client.set_flow_run_state(run.flow_run, Cancelling(message=message) if cancel else Crashed(message=message),
                              force=True)


def wait(config: PipelineConfig, active: dict[int, FoldRun], keys: dict[int, str]) -> None:
    """Until every fold's run completed; a failed fold (or the deadline) fails the stage."""
    pool = config.cv.pool
    deadline = time.monotonic() + pool.wait_minutes * 60
    with _client() as client:
        try:
            while active:
                for fold, run in list(active.items()):
                    flow_run = client.read_flow_run(run.flow_run)
                    state = flow_run.state
                    if state.is_completed():
                        del active[fold]
                        log.info("fold %d: done (%s)", fold, flow_run.name)
                    elif state.is_failed() or state.is_cancelled():
                        del active[fold]  # its state stays as it ended; the others are cancelled below
                        raise UserError(f"fold {fold} failed ({flow_run.name}, {state.name}): {state.message}")
                    elif state.is_crashed() or lost(config, run, state.is_running()):
                        stopped = read_lease(lease_path(config, fold)).get("stopped")
                        why = (f"it crashed: {state.message}" if state.is_crashed() else
                               f"{stopped} (its lease says)" if stopped else
                               f"its worker stopped reporting: no lease beat for {pool.lost_after_s:g} s")
                        if run.attempt > pool.retries:
                            del active[fold]
                            raise UserError(f"fold {fold}: {why}, and it was started {run.attempt} times "
                                            f"(cv.pool.retries: {pool.retries})")
                        log.warning("fold %d (%s): %s; starting it again, from its last epoch", fold, flow_run.name, why)
                        if not state.is_crashed():
                            give_up(client, run, f"given up by the cv stage: {why}")
                        active[fold] = submit(config, fold, keys[fold], run.attempt + 1)
                if active and time.monotonic() > deadline:
                    raise UserError(f"folds {sorted(active)} did not finish within cv.pool.wait_minutes "
                                    f"({pool.wait_minutes:g}): are the pool's workers up? (prefect worker ls)")
                time.sleep(POLL_S)
        except BaseException:
            for run in active.values():  # the stage fails: nothing it started keeps running
                give_up(client, run, "cancelled: the cv stage failed or was stopped", cancel=True)
            raise


def on_pool(work: stage.FoldWork, folds: Sequence[int]) -> list[pd.DataFrame]:
    """The cv stage's ``each`` on the pool: fold ``k`` as one flow run; a worker runs the same
    ``run_fold`` that ``work(k)`` runs here, from the same config and fold assignment."""
    config = work.config
    check_pool(config)
    digest = stage.data_digest(config)
    keys = {k: fold_key(work.assignments[k], config, digest) for k in folds}
    todo = [k for k in keys if not stage.fold_done(config, k, keys[k])]
    log.info("cross-validation on the pool: %d fold(s) to train, %d kept", len(todo), len(keys) - len(todo))
    active = {k: submit(config, k, keys[k], 1) for k in todo}
    wait(config, active, keys)
    missing = [k for k in keys if not stage.fold_done(config, k, keys[k])]
    if missing:
        raise UserError(f"folds {missing} completed on the pool but left no results in {config.cv.out_dir}: "
                        "do the workers share this folder (same path on every machine)?")
    shutil.rmtree(config.cv.out_dir / LEASES, ignore_errors=True)
    return [pd.read_csv(config.cv.fold_dir(k) / stage.SCORES_FILE) for k in keys]
