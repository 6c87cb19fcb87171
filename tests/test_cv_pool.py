"""The cv stage's folds on a Prefect work pool: real process workers on the session's Prefect server.

Each test drives ``unet.cv.stage.run`` with ``tasks.cv_pool.on_pool`` as its ``each``, as the stage
does; the workers are ``prefect worker start`` processes running the ``cv-fold`` deployment.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest

from tasks import cluster, cv_pool
from unet.augment import stage as augment
from unet.config import parse_config
from unet.cv import stage
from unet.cv.folds import fold_key
from unet.errors import UserError
from unet.prepare.stage import prepare_dataset
from unet.weightmaps import stage as weightmaps

from conftest import REPO, make_raw_tree, merged, tiny_stage_params

POOL = "lgg-cv-test"
DEPLOYMENT = "lgg-cv-fold-test"


def pool_params(root: Path, out: str, **train) -> dict:
    params = tiny_stage_params(root, epochs=1, threads=1, **train)
    params["cv"] = {"folds": 2, "epochs": 2, "val_fraction": 0.2, "out_dir": str(root / out),
                    "metrics_dir": str(root / f"{out}-metrics"), "executor": "pool",
                    "pool": {"deployment": f"cv-fold/{DEPLOYMENT}", "lost_after_s": 10, "wait_minutes": 10}}
    return params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    make_raw_tree(root / "raw/kaggle_3m", patients=6, slices=6, size=32)
    config = parse_config(pool_params(root, "cv"))
    prepare_dataset(config.data.raw_root, config.prepare)
    weightmaps.run(config)
    augment.run(config)
    return root


class Workers:
    """Two process workers on the session's server, restarted by ``ensure`` when one was killed."""

    def __init__(self, api: str, root: Path):
        self.api, self.root, self.services = api, root, {}
        self.folder = root / "workers"
        self.folder.mkdir(exist_ok=True)

    def ensure(self) -> None:
        for k in range(2):
            name = f"worker-{k}"
            if name in self.services and self.services[name].process.poll() is None:
                continue
            env = {**os.environ, "PREFECT_API_URL": self.api, "LGG_WORKER": name, "PYTHONPATH": str(REPO),
                   "LGG_FOLD_ROOTS": str(self.root), "PREFECT_WORKER_QUERY_SECONDS": "1"}
            log = self.folder / f"{name}.log"
            self.services[name] = cluster.Service(name, cluster.spawn(name, cluster.worker_command(POOL, name), log,
                                                                      env, REPO), log)
        self.wait_online()

    def wait_online(self, timeout_s: float = 180) -> None:
        """Until both workers poll the pool (a fold sent earlier would all go to the first one up)."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                online = {w.name for w in client.read_workers_for_work_pool(POOL)
                          if str(getattr(w.status, "value", w.status)).upper() == "ONLINE"}
            if set(self.services) <= online:
                return
            time.sleep(0.5)
        raise AssertionError(f"workers not online after {timeout_s} s: see {self.folder}")

    def stop(self) -> None:
        for service in self.services.values():
            cluster.stop_service(service)


@pytest.fixture(scope="module")
def workers(prefect_api, prepared):
    cluster.deploy(REPO, pool=POOL, name=DEPLOYMENT)
    pool = Workers(prefect_api, prepared)
    pool.ensure()
    yield pool
    pool.stop()


@pytest.fixture
def on_pool(workers, prepared, monkeypatch):
    workers.ensure()
    monkeypatch.chdir(prepared)
    return cv_pool.on_pool


def deployment_runs(name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        return len(client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))))


def test_folds_on_two_workers_overlap_and_equal_the_sequential_run(prepared, on_pool):
    long_enough = {"cv": {"epochs": 4}}  # folds of ~5 s: long enough to overlap despite the workers' start skew
    elsewhere = {"cv": {"out_dir": str(prepared / "cv-local"), "metrics_dir": str(prepared / "local-metrics")}}
    local = parse_config(merged(merged(pool_params(prepared, "cv", steps_per_epoch=150), long_enough), elsewhere))
    sequential = stage.run(local)
    pooled_config = parse_config(merged(pool_params(prepared, "cv", steps_per_epoch=150), long_enough))
    from prefect import flow

    @flow(name="cv-probe")
    def cv_stage():  # as the stage runs it: the fold runs are sub-runs of the stage's run
        from prefect.runtime import flow_run

        return stage.run(pooled_config, each=on_pool), flow_run.id

    pooled, parent = cv_stage()
    a, b = (pd.read_csv(c.cv.per_patient_path).set_index("patient") for c in (local, pooled_config))
    assert list(a.index) == list(b.index) and b.index.is_unique  # every patient once, out of fold
    pd.testing.assert_frame_equal(a, b)  # the same numbers, wherever the folds ran
    assert pooled["dsc_mean"] == sequential["dsc_mean"]
    runs = pooled["fold_runs"]
    assert {r["worker"] for r in runs} == {"worker-0", "worker-1"}
    assert cluster.overlaps(runs), runs
    assert not (pooled_config.cv.out_dir / cv_pool.LEASES).exists()  # nothing of the pool's left in the output
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for r in runs:
            child = client.read_flow_run(r["run"])
            assert str(client.read_task_run(child.parent_task_run_id).flow_run_id) == str(parent)  # under the stage's run

    before = deployment_runs(DEPLOYMENT)
    again = stage.run(pooled_config, each=on_pool)  # a finished fold is never sent again
    assert deployment_runs(DEPLOYMENT) == before and again["dsc_mean"] == pooled["dsc_mean"]


def test_a_failing_fold_fails_the_stage_with_its_message_and_cancels_the_others(prepared, on_pool):
    from prefect.client.orchestration import get_client

    config = parse_config(pool_params(prepared, "cv-fail", steps_per_epoch=40))
    folds = stage.assignments(stage.studied_manifest(config), config)
    right = fold_key(folds[1], config, stage.data_digest(config))
    runs = {0: cv_pool.submit(config, 0, "not-the-key", 1),  # what a worker that sees other data meets
            1: cv_pool.submit(config, 1, right, 1)}
    with pytest.raises(UserError, match=r"fold 0 failed .*not what the cv stage started the fold with"):
        cv_pool.wait(config, dict(runs), {0: "not-the-key", 1: right})
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(runs[1].flow_run).state.name in ("Cancelling", "Cancelled")
        assert client.read_flow_run(runs[0].flow_run).state.is_failed()  # the failed one keeps its own state


def test_a_fold_whose_worker_dies_resumes_from_its_last_epoch_on_another(prepared, on_pool, workers):
    config = parse_config(merged(pool_params(prepared, "cv-kill", steps_per_epoch=120), {"cv": {"epochs": 8}}))
    found: dict = {}

    def kill_the_first_one_past_epoch_two(work, folds):
        cfg = work.config

        def watch():  # beside the stage's wait: the first fold with 2 epochs done loses its worker
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not found:
                for k in range(2):
                    history = cfg.cv.fold_dir(k) / "train_history.csv"
                    lease = cv_pool.read_lease(cv_pool.lease_path(cfg, k))
                    done = stage.read_fold(cfg.cv.fold_dir(k)).get("done")
                    if history.is_file() and 2 <= len(pd.read_csv(history)) < 6 and lease.get("worker") and not done:
                        found.update(fold=k, worker=lease["worker"], epochs=len(pd.read_csv(history)))
                        # the worker dies; its fold (a session of its own) notices and stops within a beat
                        cluster.kill_service(workers.services[lease["worker"]])
                        found["fold_pid"] = lease["pid"]
                        break
                time.sleep(0.3)

        import threading

        threading.Thread(target=watch, daemon=True).start()
        return on_pool(work, folds)

    metrics = stage.run(config, each=kill_the_first_one_past_epoch_two)
    assert found, "no fold reached epoch 2"
    assert not cv_pool.alive(found["fold_pid"])  # the orphaned fold stopped (it did not train on beside its rerun)
    attempts = stage.read_attempts(config.cv.fold_dir(found["fold"]))
    assert attempts[0]["worker"] == found["worker"] and len(attempts) == 2
    assert attempts[1]["worker"] != found["worker"]
    history = pd.read_csv(config.cv.fold_dir(found["fold"]) / "train_history.csv")
    assert list(history["epoch"]) == list(range(1, 9))  # resumed, not restarted: every epoch once
    assert metrics["fold_runs"][found["fold"]]["attempts"] == 2 and metrics["n_volumes"] == 6


def test_a_fold_is_trained_only_in_its_stages_folder(tmp_path):
    with pytest.raises(UserError, match="not this worker's repository"):
        cv_pool.checked_workdir(str(tmp_path), REPO, environ={})
    assert cv_pool.checked_workdir(str(tmp_path), REPO, environ={cv_pool.ROOTS_VARIABLE: str(tmp_path.parent)})
    assert cv_pool.checked_workdir(str(REPO / "tests"), REPO, environ={}) == REPO / "tests"


def test_the_executor_is_local_unless_asked(prepared):
    config = parse_config(tiny_stage_params(prepared))
    assert cv_pool.executor(config, {}) == "local"
    assert cv_pool.executor(config, {cv_pool.EXECUTOR_VARIABLE: "pool"}) == "pool"
    with pytest.raises(UserError, match="LGG_CV_EXECUTOR='dask'"):
        cv_pool.executor(config, {cv_pool.EXECUTOR_VARIABLE: "dask"})


def test_a_second_cluster_in_one_folder_is_refused(tmp_path):
    with cluster.exclusive(tmp_path):
        with pytest.raises(UserError, match="a demo cluster already runs here"):
            with cluster.exclusive(tmp_path):
                pass
    with cluster.exclusive(tmp_path):  # free again once the first ended
        pass
    shutil.rmtree(tmp_path)


def test_cv_json_names_the_tracking_store_without_password_or_local_folder(tmp_path, monkeypatch):
    from tasks.cv import tracking_store

    config = parse_config(tiny_stage_params(tmp_path))
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    assert tracking_store(config, {}) == "sqlite:///mlflow.db"
    shared = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "LGG_TRACKING_STORE": "postgresql://lgg:pw@db:5432/mlflow"}
    assert tracking_store(config, shared) == "postgresql://lgg:***@db:5432/mlflow"
    assert tracking_store(config, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
