"""Faults a user meets: stale staging folders, full disks, odd permissions, duplicate keys, servers away."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from unet.config import ConfigError, load_config
from unet.io.atomic import OutputError, atomic_dir, atomic_file, sweep_stale

REPO = Path(__file__).resolve().parents[1]


# -- outputs: nothing left behind, the permissions of a plain write ----------------------------------

def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_staging_folder_is_swept_at_the_next_write(tmp_path):
    target = tmp_path / "weightmaps"
    stale = tmp_path / f".weightmaps.tmp-{dead_pid()}-abc123"
    (stale / "arrays").mkdir(parents=True)
    live = tmp_path / f".weightmaps.tmp-{os.getppid()}-def456"  # a live process's: left alone
    live.mkdir()
    with atomic_dir(target) as staging:
        (staging / "x").write_text("1")
    assert not stale.exists() and live.exists() and (target / "x").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "weightmaps"]


def test_a_failed_write_leaves_the_target_and_no_staging(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old").write_text("kept")
    with pytest.raises(RuntimeError, match="patient task failed"):
        with atomic_dir(target) as staging:
            (staging / "half").write_text("x")
            raise RuntimeError("patient task failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "old").read_text() == "kept"


def test_staged_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "folder") as staging:
            (staging / "f").write_text("x")
        with atomic_file(tmp_path / "file.json", "w") as handle:
            handle.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "folder").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o644


def test_a_disk_too_small_is_refused_before_writing(tmp_path):
    with pytest.raises(OutputError, match=f"{tmp_path}: needs about .* bytes but its disk has .* free"):
        with atomic_dir(tmp_path / "augmented", expected_bytes=1 << 60):
            raise AssertionError("nothing is written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "no space left writing train.json"),
                                           (errno.EROFS, "cannot write train.json there")])
def test_a_full_disk_or_read_only_folder_is_one_line_naming_it(tmp_path, monkeypatch, code, message):
    def fail(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match=message) as error:
        with atomic_file(tmp_path / "metrics" / "train.json", "w") as handle:
            handle.write("{}")
    assert str(tmp_path / "metrics") in str(error.value)
    assert not [p for p in (tmp_path / "metrics").iterdir()]  # the temporary file is gone too


WRITE_LIMITED = """
import resource, signal, sys, torch
from unet.errors import UserError
from unet.models.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    save_checkpoint(sys.argv[1], {"model": {"w": torch.zeros(1000, 1000)}, "model_config": {}})
except UserError as exc:
    print("UserError:", exc)
"""


def test_a_checkpoint_that_runs_out_of_room_mid_write_is_one_line(tmp_path):
    """A real failed write inside torch.save (a file-size limit: the kernel refuses the write, as a full
    disk does): torch raises RuntimeError "unexpected pos" with the OSError behind it; the user gets one line."""
    import subprocess
    import sys

    target = tmp_path / "models" / "best.pt"
    result = subprocess.run([sys.executable, "-c", WRITE_LIMITED, str(target)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"UserError: {target.parent}: no room (File too large) writing best.pt ("), \
        result.stdout + result.stderr
    assert list(target.parent.iterdir()) == []  # neither the checkpoint nor its temporary file


def test_an_exception_with_a_foreign_oserror_behind_it_keeps_its_type(tmp_path):
    with pytest.raises(RuntimeError, match="a bug"):
        with atomic_file(tmp_path / "out.json", "w"):
            try:
                open(tmp_path / "elsewhere" / "missing.txt")
            except FileNotFoundError:
                raise RuntimeError("a bug")  # noqa: B904 (the OSError behind it, implicitly chained, is the case)


def test_an_oserror_that_is_not_about_the_output_keeps_its_type(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_dir(tmp_path / "out"):
            open(tmp_path / "elsewhere" / "missing.txt")


def test_sweep_ignores_other_names(tmp_path):
    (tmp_path / ".weightmaps.tmp-notapid-x").mkdir()
    (tmp_path / ".other.tmp-1-x").mkdir()
    assert sweep_stale(tmp_path / "weightmaps") == []


# -- params.yaml --------------------------------------------------------------------------------------

def test_a_duplicate_key_is_refused_with_both_lines(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 3\n  lr: 0.001\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"'epochs' is given twice in one section, on lines 2 and 4"):
        load_config(path)


# -- servers that are away ----------------------------------------------------------------------------

def run_check(tmp_path, **env) -> tuple[subprocess.CompletedProcess, float]:
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "flows.check", "--params", str(params)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env}, capture_output=True, text=True,
                            timeout=60)
    return result, time.monotonic() - started


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_an_mlflow_server_that_is_down_is_one_line_within_seconds(tmp_path):
    uri = f"http://127.0.0.1:{closed_port()}"
    result, seconds = run_check(tmp_path, MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 1 and seconds < 20
    assert result.stderr.count("\n") == 1 and uri in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
def test_a_prefect_api_that_never_answers_is_a_bounded_wait(tmp_path):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/api"
    try:
        result, seconds = run_check(tmp_path, PREFECT_API_URL=url, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    finally:
        server.close()
    assert result.returncode == 1 and seconds < 20 and accepted
    assert f"PREFECT_API_URL={url} does not answer" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("command", [["-m", "flows", "download"], ["-m", "flows.pipeline", "download"]])
def test_a_stage_and_the_pipeline_on_a_prefect_api_that_never_answers_stop_in_seconds(tmp_path, command):
    """Not only the check stage: a stage or the pipeline flow started by hand says it in one line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/api"
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "home")}
    args = [*command, "--params", str(params)] if command[1] == "flows" else command
    started = time.monotonic()
    try:
        result = subprocess.run([sys.executable, *args], cwd=REPO if command[1] != "flows" else tmp_path, env=env,
                                capture_output=True, text=True, timeout=90)
    finally:
        server.close()
    assert result.returncode == 1 and time.monotonic() - started < 30, result.stderr[-2000:]
    assert f"PREFECT_API_URL={url} does not answer" in result.stderr and "Traceback" not in result.stderr


def test_training_goes_on_through_an_mlflow_outage_and_sends_the_epochs_later(monkeypatch, prefect_api):
    from mlflow.exceptions import MlflowException
    from prefect import flow

    from tasks import train as train_tasks

    sent, down = [], {"epochs": {2, 3}}

    def log_epoch(run_id, epoch, metrics):
        if epoch in down["epochs"]:
            raise MlflowException("API request failed: Connection refused")
        sent.append(epoch)

    monkeypatch.setattr(train_tasks, "log_epoch", log_epoch)
    metrics = {"loss": 0.5, "val_dsc": 0.5, "val_dsc_median": 0.5, "images_per_s": 1.0}

    @flow
    def training():
        reporter = train_tasks.epoch_reporter("run", 4)
        for epoch in (1, 2, 3):
            reporter(epoch, metrics)
        assert sent == [1] and [e for e, _ in reporter.pending] == [2, 3]
        down["epochs"] = set()  # the server is back
        reporter(4, metrics)
        return reporter

    reporter = training()
    assert sent == [1, 2, 3, 4] and not reporter.pending


def test_a_resumed_training_sends_the_epochs_an_outage_lost(monkeypatch, prefect_api, tmp_path):
    """The process that trained epochs 2-3 died with them pending; the resume (same run, a real
    SQLite store) sends them from the checkpoint's history before its own."""
    import mlflow
    from mlflow import MlflowClient
    from prefect import flow

    from tasks import train as train_tasks

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    history = [{"epoch": e, "loss": 1.0 / e, "val_dsc": 0.1 * e} for e in (1, 2, 3, 4)]
    for epoch in (1, 4):  # what got through before and after the outage
        train_tasks.log_epoch(run_id, epoch, history[epoch - 1])

    @flow
    def resumed():
        train_tasks.epoch_reporter(run_id, 4, resumed={"epoch": 4, "history": history})
        return train_tasks.epoch_reporter(run_id, 4, resumed={"epoch": 4, "history": history})  # twice: no copies

    assert not resumed().pending
    for key, logged in (("loss", "loss"), ("val_dsc", "epoch_val_dsc")):
        steps = sorted((m.step, m.value) for m in client.get_metric_history(run_id, logged))
        assert steps == [(h["epoch"], h[key]) for h in history], key


def test_the_lost_tracking_message_names_commands_that_exist(tmp_path):
    """``dvc repro`` has no -S: the message says what does set train.resume."""
    import mlflow

    from tasks import train as train_tasks
    from unet.config import parse_config

    from conftest import outputs_under

    class Stuck:  # a reporter whose store went away with epoch 2 pending
        pending = [(2, {"loss": 1.0})]

        def flush(self) -> bool:
            return False

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri("http://127.0.0.1:9")  # nothing listens: the store is gone
    try:
        with pytest.raises(train_tasks.TrackingLost) as caught:
            train_tasks.finish_run("run", parse_config(outputs_under(tmp_path)), {}, Stuck())
    finally:
        mlflow.set_tracking_uri(previous)
    assert "repro train -S" not in str(caught.value)
    assert "dvc exp run -S train.resume=true train" in str(caught.value)


# -- an MLflow store that cannot take a stage's writes ---------------------------------------------------

@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    """A real SQLite MLflow store in tmp_path with one run; put back afterwards."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("store-faults", artifact_location=(tmp_path / "mlartifacts").as_uri())
    yield client, client.create_run(experiment).info.run_id
    mlflow.set_tracking_uri(previous)


def store_stages(client, run_id, figure):
    """The same MLflow write in a stage's task and in a stage's flow body."""
    from flows.common import stage_flow
    from tasks.common import stage_task

    @stage_task(name="log-figure")
    def log_figure():
        client.log_artifact(run_id, str(figure), "figures")

    @stage_flow("store-fault-in-a-task")
    def in_task():
        log_figure()

    @stage_flow("store-fault-in-the-flow")
    def in_flow():
        client.log_artifact(run_id, str(figure), "figures")

    return in_task, in_flow


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"),
                                         (errno.ENOSPC, "No space left on device")])
def test_an_artifact_folder_that_is_read_only_or_full_is_one_line(sqlite_store, prefect_api, tmp_path, monkeypatch,
                                                                  caplog, code, words):
    import shutil

    from tasks.common import TrackingStoreError

    client, run_id = sqlite_store
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"\x89PNG")

    def refused(source, target, *args, **kwargs):  # the artifact folder's disk, mounted read-only or full
        raise OSError(code, os.strerror(code), str(tmp_path / "mlartifacts"))

    monkeypatch.setattr(shutil, "copyfileobj", refused)
    for stage in store_stages(client, run_id, figure):
        with pytest.raises(TrackingStoreError) as caught:
            stage()
        said = str(caught.value)
        assert f"MLflow could not write to its store ({words}: {tmp_path / 'mlartifacts'})" in said, said
        assert "\n" not in said
        assert "MLFLOW_TRACKING_URI" in said and caught.value.__cause__ is None
    assert "Traceback" not in caplog.text


@pytest.mark.integration  # about 20 s: MLflow waits that long for the lock
def test_a_locked_sqlite_store_is_one_line_and_a_short_log(sqlite_store, prefect_api, tmp_path, caplog):
    import sqlite3

    from flows.common import stage_flow
    from tasks.common import TrackingStoreError, stage_task

    client, run_id = sqlite_store

    @stage_task(name="log-metric")
    def log_metric():
        client.log_metric(run_id, "loss", 1.0)

    @stage_flow("locked-store")
    def stage():
        log_metric()

    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, or a sqlite3 shell left open
    try:
        with caplog.at_level("ERROR"), pytest.raises(TrackingStoreError, match="locked by another process"):
            stage()
    finally:
        holder.rollback()
        holder.close()
    logged = [r for r in caplog.records if r.name == "mlflow.store.db.utils"]
    assert logged and all(r.exc_info is None and "\n" not in r.getMessage() for r in logged)
    client.log_metric(run_id, "loss", 1.0)  # and the store works again once the lock is gone
